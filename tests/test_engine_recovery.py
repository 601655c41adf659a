"""One request cannot take a model's engine down for the others.

A grammar the engine cannot follow is refused with a 400 before it reaches the shared
engine (inference.grammar). If an engine fails anyway, every turn it held ends at once
or begins again in a new engine (inference.engine ``_restart``): no request is left
waiting, no lease is left held."""

import asyncio
import json

import pytest

from accounts.models import Lease
from demomodel.corpus import count_answer, count_prompt
from inference.engine import GRAMMAR_FAILURE, SamplingParams, Turn
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, issue_key, model_in_process
from tests import test_engine_worker
from tests.test_engine_worker import chat_tokens, collect

# The demo model's engine, started once for this module: test_engine_worker's fixture.
worker = test_engine_worker.worker

# Every value needs another inside it: no finite JSON value satisfies it, and the engine's
# grammar compiler fails inside the batched step trying to force the endless output.
RECURSIVE_SCHEMA = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}},
                    "$ref": "#/$defs/n"}
# As the server hands a response_format to the engine (inference.serving).
POISON = ("json_schema", json.dumps({"x-guidance": {"whitespace_flexible": False}, **RECURSIVE_SCHEMA}))


def turn_for(worker, content, *, max_tokens=600, guidance=None):
    return Turn(chat_tokens(worker, content), SamplingParams(max_tokens=max_tokens, guidance=guidance),
                asyncio.get_running_loop(), asyncio.Event())


async def test_a_grammar_that_fails_the_engine_ends_alone_and_its_batch_and_the_waiting_turns_are_answered(worker):
    restarts = worker.stats.restarts
    poison = turn_for(worker, "Answer in JSON.", max_tokens=20, guidance=POISON)
    beside = [turn_for(worker, count_prompt(n)) for n in (5, 6, 7)]
    arriving = [turn_for(worker, count_prompt(n)) for n in range(10, 26)]
    # Taken in together, so that the engine forms its first batch of all four.
    worker.hold_places([poison, *beside, *arriving])
    for turn in (poison, *beside, *arriving):
        worker.submit(turn)

    texts = await asyncio.wait_for(asyncio.gather(*(collect(turn) for turn in (poison, *beside, *arriving))), 60)

    assert (poison.finish.reason, poison.finish.error, texts[0]) == ("FAILED", GRAMMAR_FAILURE, "")
    assert texts[1:] == [count_answer(n) for n in (5, 6, 7, *range(10, 26))]
    assert worker.stats.restarts == restarts + 1
    assert worker.running
    assert (worker.stats.running, worker.stats.waiting, worker.queued) == (0, 0, 0)


async def test_a_turn_whose_tokens_reached_its_client_ends_with_an_error_when_its_engine_fails(worker):
    going = turn_for(worker, count_prompt(150))
    poison = turn_for(worker, "Answer in JSON.", max_tokens=20, guidance=POISON)
    worker.submit(going)

    def let_the_poison_in_after_ten_numbers(text):
        if len(text.split()) >= 10 and not poison._submitted:
            worker.submit(poison)

    text = await asyncio.wait_for(collect(going, let_the_poison_in_after_ten_numbers), 60)
    await asyncio.wait_for(collect(poison), 60)

    # The newcomer joined the running batch (a re-form), and the step failed for both.
    assert (going.finish.reason, going.finish.error) == ("FAILED", "engine failure: the engine failed while generating")
    assert count_answer(150).startswith(text) and len(text.split()) >= 10 and text != count_answer(150)
    assert going.finish.usage.completion_tokens == len(going._generated)
    assert (poison.finish.reason, poison.finish.error) == ("FAILED", GRAMMAR_FAILURE)
    assert (worker.stats.running, worker.stats.waiting, worker.queued) == (0, 0, 0)


# --- over HTTP, in-process, with a key whose every request takes a lease ---------------


@pytest.fixture
def slow_in_process_model(live_db):
    # 20 ms a step: a long answer takes seconds, and requests arriving meanwhile wait.
    with model_in_process(0.02) as worker:
        yield worker


@pytest.fixture
def leased_key(live_db):
    key, secret = issue_key(name="engine-recovery")
    return key, secret


async def post(api, secret, body):
    return await api.post("/v1/chat/completions", body, bearer(secret))


async def stream(api, secret, n):
    """The text a streamed count answer brought, and its last event before [DONE]."""
    response = await post(api, secret, {"model": MODEL_ID, "stream": True,
                                        "messages": [{"role": "user", "content": count_prompt(n)}]})
    assert response.status == 200, await response.body()
    events = (await response.body()).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event[len("data: "):]) for event in events[:-2]]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk.get("choices"))
    return text, chunks[-1]


async def answer(api, secret, n):
    response = await post(api, secret, {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(n)}]})
    assert response.status == 200, await response.body()
    return (await response.json())["choices"][0]["message"]["content"]


async def leases_of(key):
    """The key's leases once the requests' closers have run (they give them back on the
    accounting thread, a moment after the last byte)."""
    for _ in range(200):
        count = await Lease.objects.filter(api_key=key).acount()
        if count == 0:
            return 0
        await asyncio.sleep(0.01)
    return count


async def test_a_hostile_schema_is_a_400_and_the_streams_and_requests_around_it_are_all_answered(
        in_process_model, leased_key):
    key, secret = leased_key
    api = InProcessAPI()
    streams = [asyncio.create_task(stream(api, secret, n)) for n in (20, 30, 40)]
    await until(lambda: in_process_model.stats.tokens_generated >= 3)  # the three are generating
    hostile = await post(api, secret, {
        "model": MODEL_ID, "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": RECURSIVE_SCHEMA}}})
    arriving = [asyncio.create_task(answer(api, secret, n)) for n in range(10, 26)]

    assert hostile.status == 400
    assert (await hostile.json())["error"] == {
        "message": "The engine cannot follow this 'response_format' schema: parser error: Too many items "
                   "(limit 50000; ff_tokens); try avoiding single-byte/short lexemes",
        "type": "invalid_request_error", "param": "response_format", "code": "invalid_value"}
    streamed = await asyncio.wait_for(asyncio.gather(*streams), 60)
    assert [text for text, _ in streamed] == [count_answer(n) for n in (20, 30, 40)]
    assert await asyncio.wait_for(asyncio.gather(*arriving), 60) == [count_answer(n) for n in range(10, 26)]
    assert in_process_model.stats.restarts == 0
    assert await leases_of(key) == 0


async def until(condition, seconds=30.0):
    """Wait for what other tasks and the engine thread do (bounded; no fixed sleep)."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition did not come true")


async def test_when_an_engine_fails_anyway_nothing_is_left_waiting_and_no_lease_is_held(
        slow_in_process_model, leased_key):
    worker = slow_in_process_model
    key, secret = leased_key
    api = InProcessAPI()
    streams = [asyncio.create_task(stream(api, secret, n)) for n in (150, 151, 152, 153)]
    # The batch is full (all four begun), and each has sent tokens.
    await until(lambda: worker.stats.running == 4 and worker.queued == 0)
    steps = worker.stats.steps
    await until(lambda: worker.stats.steps >= steps + 2)
    arriving = [asyncio.create_task(answer(api, secret, n)) for n in range(10, 26)]
    await until(lambda: worker.queued == 16)  # all sixteen wait for the batch to end
    worker.inject_fault()

    streamed = await asyncio.wait_for(asyncio.gather(*streams), 60)
    for n, (text, last) in zip((150, 151, 152, 153), streamed):
        assert count_answer(n).startswith(text) and text != count_answer(n)
        assert last == {"error": {"message": "The model failed while generating: engine failure: injected engine fault",
                                  "type": "server_error", "param": None, "code": "engine_error"}}
    assert await asyncio.wait_for(asyncio.gather(*arriving), 60) == [count_answer(n) for n in range(10, 26)]
    assert worker.stats.restarts == 1
    assert await leases_of(key) == 0
    health = (await (await api.get("/health")).json())["models"][0]
    assert (health["in_flight"], health["running"], health["waiting"], health["queued"]) == (0, 0, 0, 0)
