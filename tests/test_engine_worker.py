"""The engine worker in-process: continuous admission on the static CPU scheduler,
cancellation, and an engine fault ending a stream with an in-stream error."""

import asyncio
import json

import numpy as np
import pytest
from django.test import AsyncClient

from accounts.models import UsageRecord
from demomodel.corpus import count_answer, count_prompt
from inference.engine import EngineWorker, SamplingParams, Turn
from tests.conftest import DEMO_MODEL, MODEL_ID, bearer


@pytest.fixture(scope="module")
def worker():
    worker = EngineWorker(MODEL_ID, str(DEMO_MODEL), max_batch_size=4, step_delay=0.002)
    worker.start()
    yield worker
    worker.stop()


def chat_tokens(worker, content):
    text = worker.tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": content}]), add_generation_prompt=True)
    return np.asarray(worker.tokenizer.encode(text), dtype=np.int32)


def new_turn(worker, content, max_tokens=600):
    return Turn(chat_tokens(worker, content), SamplingParams(max_tokens=max_tokens), asyncio.get_running_loop(), asyncio.Event())


async def collect(turn, on_text=None, finished=None):
    text = ""
    while turn.finish is None or turn._pieces:
        await turn.wake.wait()
        turn.wake.clear()
        piece = turn.take()
        text += piece
        if on_text and piece:
            on_text(text)
    if finished is not None:
        finished.append(turn)
    return text


async def test_a_newcomer_joins_a_running_batch_and_both_answers_stay_exact(worker):
    first = new_turn(worker, count_prompt(40))
    second = new_turn(worker, count_prompt(20))
    reforms = worker.stats.reforms
    joined = asyncio.Event()

    def submit_second_once_first_is_going(text):
        # ">=": on a loaded machine several tokens arrive in one piece, skipping past 10.
        if len(text.split()) >= 10 and not joined.is_set():
            joined.set()
            worker.submit(second)

    finished = []
    worker.submit(first)
    first_text, second_text = await asyncio.gather(
        collect(first, submit_second_once_first_is_going, finished),
        _after(joined, collect(second, finished=finished)),
    )
    assert first_text == count_answer(40)
    assert second_text == count_answer(20)
    # The newcomer did not wait for the long answer to end: the batch was re-formed.
    assert finished == [second, first]
    assert worker.stats.reforms == reforms + 1
    # Usage spans both segments of the re-formed turn.
    assert first.finish.usage.completion_tokens == len(first._generated)
    assert first.finish.usage.prompt_tokens == len(first.prompt_tokens)


async def _after(event, coroutine):
    await event.wait()
    return await coroutine


async def test_a_cancelled_turn_ends_with_cancelled_and_the_usage_so_far(worker):
    turn = new_turn(worker, count_prompt(40))
    worker.submit(turn)

    def cancel_after_five_numbers(text):
        if len(text.split()) >= 5:
            worker.cancel(turn)

    text = await collect(turn, cancel_after_five_numbers)
    assert turn.finish.reason == "CANCELLED"
    assert text.startswith("1 2 3 4 5")
    assert len(text.split()) < 50
    assert turn.finish.usage.completion_tokens == len(turn._generated)
    assert worker.stats.running == 0


async def test_an_engine_fault_mid_stream_sends_an_error_event_then_done_and_the_engine_recovers(in_process_model, api_key):
    client = AsyncClient()
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}], "stream": True}
    response = await client.post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                                 headers={**bearer(api_key), "X-Request-ID": "engine-fault-1"})
    assert response.status_code == 200, response.content
    assert response.is_async  # Daphne consumes it as an async iterator, no thread
    events = []
    async for chunk in response.streaming_content:
        events.append(chunk.decode())
        if len(events) == 3:
            in_process_model.inject_fault()
    assert events[-1] == "data: [DONE]\n\n"
    error = json.loads(events[-2][len("data: "):])
    assert error == {"error": {
        "message": "The model failed while generating: engine failure: injected engine fault",
        "type": "server_error", "param": None, "code": "engine_error"}}
    assert in_process_model.stats.restarts == 1
    record = await _record("engine-fault-1")
    assert (record.status_code, record.error_code, record.streamed, record.finish_reason) == (
        200, "engine_error", True, "error")
    assert record.completion_tokens >= 1

    again = await client.post("/v1/chat/completions", json.dumps({**body, "stream": False}),
                              content_type="application/json", headers=bearer(api_key))
    assert again.status_code == 200, again.content
    assert json.loads(again.content)["choices"][0]["message"]["content"] == count_answer(40)


async def test_health_is_503_while_an_engine_is_down_and_the_next_request_starts_it_again(in_process_model, api_key):
    in_process_model.stop()
    response = await AsyncClient().get("/health")
    assert response.status_code == 503
    assert json.loads(response.content)["status"] == "unavailable"
    assert json.loads(response.content)["models"][0]["state"] == "failed"
    chat = await AsyncClient().post("/v1/chat/completions", json.dumps(
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "Repeat after me: red fox"}]}),
        content_type="application/json", headers=bearer(api_key))
    assert chat.status_code == 200, chat.content
    assert json.loads(chat.content)["choices"][0]["message"]["content"] == "red fox"
    health = json.loads((await AsyncClient().get("/health")).content)
    assert (health["status"], health["models"][0]["state"], health["models"][0]["loads"]) == ("ok", "loaded", 2)


async def _record(request_id):
    for _ in range(100):
        record = await UsageRecord.objects.filter(request_id=request_id).afirst()
        if record is not None:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


@pytest.fixture(scope="module")
def short_worker():
    """The demo model with the memory tip of models.example.toml: search.max_length 256,
    below its 512-token context."""
    worker = EngineWorker(MODEL_ID, str(DEMO_MODEL), max_batch_size=4, options={"search": {"max_length": 256}})
    worker.start()
    yield worker
    worker.stop()


async def test_search_max_length_below_the_context_bounds_the_context_and_turns_are_answered(short_worker):
    turn = new_turn(short_worker, count_prompt(20), max_tokens=200)
    short_worker.submit(turn)

    assert await asyncio.wait_for(collect(turn), 30) == count_answer(20)
    assert short_worker.context_length == 256


async def test_a_turn_the_engine_refuses_to_begin_fails_alone_and_the_next_is_answered(short_worker):
    restarts = short_worker.stats.restarts
    short_worker.context_length = 300  # more session tokens than search.max_length allows
    refused = new_turn(short_worker, count_prompt(5), max_tokens=290)  # a session of 300
    short_worker.submit(refused)
    await asyncio.wait_for(collect(refused), 30)
    short_worker.context_length = 256
    answered = new_turn(short_worker, count_prompt(5), max_tokens=200)
    short_worker.submit(answered)

    assert await asyncio.wait_for(collect(answered), 30) == count_answer(5)
    assert refused.finish.reason == "FAILED"
    assert refused.finish.error.startswith("the engine refused to begin the turn: max_session_tokens (300) must be")
    assert (short_worker.running, short_worker.stats.restarts) == (True, restarts)


async def test_a_turn_holds_its_prompt_and_max_tokens_not_the_whole_context(worker):
    """A static batch's cache is as long as its longest request's session, and a request
    sized by the context begins slower (bench/results/session-2026-12-04.md): a turn's
    session is its prompt, its max_tokens and one more, and it still runs to max_tokens."""
    assert (worker.context_length, worker.least_session_tokens) == (512, 1)
    assert worker._session_tokens(20, 5) == 26
    assert worker._session_tokens(20, 491) == 512
    assert worker._session_tokens(20, 600) == 512  # within the context
    turn = new_turn(worker, count_prompt(40), max_tokens=3)
    worker.submit(turn)
    answer = worker.tokenizer.encode(count_answer(40))
    assert await collect(turn) == worker.tokenizer.decode(answer[:3])
    assert (turn.finish.reason, turn.finish.usage.completion_tokens) == ("MAX_GENERATED_TOKENS", 3)
