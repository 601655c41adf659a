"""The events a dynamic-batching engine sends (a GPU build with a paged KV cache), handled
by the engine worker: CAPACITY_BLOCKED is no finish; FAILED|RETRYABLE before any token
begins the turn again (a bounded number of times); after tokens, or not retryable, the
request fails (503 ``engine_overloaded`` with Retry-After when retryable, else 500).

The CPU static scheduler here never sends CAPACITY_BLOCKED or RETRYABLE. So the real
engine runs the real turns, and :class:`DynamicEventsWorker` rewrites, in the one place
the worker reads a step's events (``_run_engine``), some events of the turns a test
marks by their ``max_tokens``: the smallest unit that cannot be produced here."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import onnxruntime_genai as og
import pytest

from demomodel.corpus import count_answer, count_prompt
from inference.engine import RETRYABLE_FAILURE, EngineWorker, SamplingParams, Turn
from inference.registry import ModelSpec
from tests.asgi import InProcessAPI
from tests.conftest import DEMO_MODEL, MODEL_ID, serving
from tests.test_engine_worker import chat_tokens, collect

TOKEN, CAPACITY_BLOCKED, FAILED, RETRYABLE = 1, 4, 8, 16

# max_tokens marking what happens to a turn's events:
BLOCKED_AT_FIRST = 91  # its first three steps also report it capacity-blocked
RETRYABLE_ONCE = 92  # its first event becomes FAILED|RETRYABLE, once
RETRYABLE_ALWAYS = 93  # its first event becomes FAILED|RETRYABLE, every time it begins
RETRYABLE_AFTER_TOKENS = 94  # its fourth event becomes FAILED|RETRYABLE
NOT_RETRYABLE = 95  # its first event becomes FAILED (request unserviceable)


@dataclass
class FabricatedEvent:
    """An og.EngineEvent's attributes, as the worker reads them."""

    request: object
    flags: int
    error_code: object = og.EngineErrorCode.NONE
    finish_reason: object = og.FinishReason.NONE
    usage: object = None
    token: int = 0


def failure(request, flags, code=og.EngineErrorCode.RETRYABLE_EXECUTION):
    return FabricatedEvent(request, flags, code, og.FinishReason.FAILED)


class DynamicEventsWorker(EngineWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[int, int] = {}  # id(turn) -> real events seen for it
        self.rewritten = 0

    def _run_engine(self):
        events = []
        for event in super()._run_engine():
            turn = self._running.get(event.request)
            marker = turn.params.max_tokens if turn is not None else None
            seen = self.seen[id(turn)] = self.seen.get(id(turn), 0) + 1
            replacement = self._rewrite(marker, seen, turn, event)
            if replacement is not None:
                self.rewritten += 1
                events.extend(replacement)
            else:
                events.append(event)
        return events

    def _rewrite(self, marker, seen, turn, event):
        request = event.request
        if marker == BLOCKED_AT_FIRST and seen <= 3:
            return [FabricatedEvent(request, CAPACITY_BLOCKED), event]
        if marker == RETRYABLE_ONCE and seen == 1:
            return [failure(request, FAILED | RETRYABLE)]
        if marker == RETRYABLE_ALWAYS and not turn._generated:
            return [failure(request, FAILED | RETRYABLE)]
        if marker == RETRYABLE_AFTER_TOKENS and seen == 4:
            return [failure(request, FAILED | RETRYABLE)]
        if marker == NOT_RETRYABLE and seen == 1:
            return [failure(request, FAILED, og.EngineErrorCode.REQUEST_UNSERVICEABLE)]
        return None


@pytest.fixture(scope="module")
def worker():
    worker = DynamicEventsWorker(MODEL_ID, str(DEMO_MODEL), max_batch_size=4)
    worker.start()
    yield worker
    worker.stop()


def turn_for(worker, content, max_tokens):
    return Turn(chat_tokens(worker, content), SamplingParams(max_tokens=max_tokens), asyncio.get_running_loop(),
                asyncio.Event())


async def run(worker, *turns):
    for turn in turns:
        worker.submit(turn)
    return await asyncio.wait_for(asyncio.gather(*(collect(turn) for turn in turns)), 30)


async def test_capacity_blocked_is_no_finish_and_the_turn_goes_on(worker):
    rewritten = worker.rewritten
    blocked = turn_for(worker, count_prompt(12), BLOCKED_AT_FIRST)

    assert await run(worker, blocked) == [count_answer(12)]
    assert blocked.finish.reason == "EOS"
    assert worker.rewritten == rewritten + 3


async def test_a_retryable_failure_before_any_token_begins_the_turn_again(worker):
    started = worker.stats.turns_started
    retried = turn_for(worker, count_prompt(9), RETRYABLE_ONCE)
    beside = turn_for(worker, count_prompt(6), 600)
    worker.hold_places([retried, beside])

    assert await run(worker, retried, beside) == [count_answer(9), count_answer(6)]
    assert (retried.finish.reason, retried._retries) == ("EOS", 1)
    assert retried.finish.usage.completion_tokens == len(retried._generated)
    assert worker.stats.turns_started == started + 2
    assert (worker.stats.running, worker.stats.waiting, worker.queued) == (0, 0, 0)


async def test_retries_are_bounded_and_then_the_turn_fails_as_retryable(worker):
    failing = turn_for(worker, count_prompt(9), RETRYABLE_ALWAYS)

    assert await run(worker, failing) == [""]
    assert (failing.finish.reason, failing._retries) == ("FAILED", 3)
    assert failing.finish.error == f"{RETRYABLE_FAILURE} (RETRYABLE_EXECUTION)"
    assert worker.running


async def test_a_retryable_failure_after_tokens_fails_the_turn_with_the_tokens_so_far(worker):
    cut = turn_for(worker, count_prompt(20), RETRYABLE_AFTER_TOKENS)

    text, = await run(worker, cut)

    assert (cut.finish.reason, cut._retries) == ("FAILED", 0)
    assert cut.finish.error == f"{RETRYABLE_FAILURE} (RETRYABLE_EXECUTION)"
    assert count_answer(20).startswith(text) and len(cut._generated) == 3
    assert cut.finish.usage.completion_tokens == 3


async def test_a_turn_whose_options_the_engine_refuses_of_any_exception_type_fails_alone(worker):
    """og's bindings raise TypeError for a negative token count (RuntimeError for what the
    engine refuses): either fails that turn, not the batch it was to join."""
    restarts = worker.stats.restarts
    refused = Turn(chat_tokens(worker, count_prompt(5)), SamplingParams(max_tokens=-5), asyncio.get_running_loop(),
                   asyncio.Event())
    beside = turn_for(worker, count_prompt(7), 600)
    worker.hold_places([refused, beside])

    assert await run(worker, refused, beside) == ["", count_answer(7)]
    assert refused.finish.reason == "FAILED"
    assert refused.finish.error.startswith("set_max_generated_tokens(): incompatible function arguments")
    assert (worker.stats.restarts, worker.running) == (restarts, True)


# --- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def api(live_db, settings):
    settings.REQUIRE_API_KEY = False
    settings.ENGINE_WORKER_CLASS = "tests.test_engine_events.DynamicEventsWorker"
    with serving([ModelSpec(MODEL_ID, str(DEMO_MODEL), max_batch_size=4)], default=MODEL_ID):
        yield InProcessAPI()


async def chat(api, content, max_tokens, **params):
    response = await api.post("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **params})
    return response.status, response.headers, await response.body()


async def test_a_turn_failed_as_retryable_is_a_503_with_retry_after_and_the_next_is_answered(api):
    status, headers, body = await chat(api, count_prompt(9), RETRYABLE_ALWAYS)
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(body)["error"]["code"] == "engine_overloaded"
    assert json.loads(body)["error"]["type"] == "server_error"

    status, headers, body = await chat(api, count_prompt(9), RETRYABLE_ONCE)
    assert (status, json.loads(body)["choices"][0]["message"]["content"]) == (200, count_answer(9))


async def test_after_tokens_were_streamed_a_retryable_failure_ends_the_stream_with_an_error(api):
    status, _, body = await chat(api, count_prompt(20), RETRYABLE_AFTER_TOKENS, stream=True)
    events = [line[len("data: "):] for line in body.decode().split("\n\n") if line]
    assert status == 200
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_overloaded"
    text = "".join(json.loads(event)["choices"][0]["delta"].get("content", "") for event in events[:-2])
    assert text and count_answer(20).startswith(text)


async def test_a_failure_that_is_not_retryable_is_a_500_engine_error(api):
    status, _, body = await chat(api, count_prompt(9), NOT_RETRYABLE)
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (500, "engine_error")
    assert error["message"] == "The model failed while generating: engine error REQUEST_UNSERVICEABLE"


def test_a_model_configured_for_dynamic_batching_keeps_its_engine_section(tmp_path, live_db):
    """No static_batching section is added beside a dynamic_batching one (og would make a
    static Engine of both): the demo model, which has no paged attention, is refused."""
    from inference.engine import ModelLoadError
    from tests.test_context_and_sampling import model_copy

    folder = model_copy(tmp_path / "paged")
    config = json.loads((tmp_path / "paged" / "genai_config.json").read_text())
    config["engine"] = {"dynamic_batching": {"block_size": 256, "max_batch_size": 8}}
    (tmp_path / "paged" / "genai_config.json").write_text(json.dumps(config))

    with pytest.raises(ModelLoadError, match="Paged cache input must have rank four"):
        EngineWorker(MODEL_ID, folder, max_batch_size=4).start()
