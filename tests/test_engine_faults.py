"""A crash inside the engine thread of a running server (the test-only switch of
inference/faults.py: SIGUSR1): the requests in flight end with OpenAI-shaped errors
(in-stream for a stream), their usage is recorded with the error, the engine restarts
and the next request is answered.

Driven in-process: the switch installed in this process (as llmserver.asgi installs it
when ENGINE_FAULT_INJECTION is on), the signal sent to this process, the API through
tests/asgi.py."""

import asyncio
import json
import logging
import os
import signal
import uuid

import pytest

from accounts.books import books
from accounts.models import UsageRecord
from demomodel.corpus import count_answer, count_prompt
from inference import faults
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, engine_state, model_in_process, wait_until

ENGINE_ERROR = {"error": {
    "message": "The model failed while generating: engine failure: injected engine fault",
    "type": "server_error", "param": None, "code": "engine_error"}}


@pytest.fixture
def fault_switch(live_db, settings):
    """The demo model served in-process at 20 ms a step (a 40-number answer takes most of
    a second, long enough to crash it), and SIGUSR1 crashing its engine."""
    settings.ENGINE_FAULT_INJECTION = True
    previous = signal.getsignal(signal.SIGUSR1)
    with model_in_process(0.02) as worker:
        faults.install()
        try:
            assert signal.getsignal(signal.SIGUSR1) is not previous
            yield worker
        finally:
            signal.signal(signal.SIGUSR1, previous)


async def record_for(request_id: str) -> UsageRecord:
    """The request's one record, once the books have written what was queued."""
    async def written():
        assert await asyncio.to_thread(books.flush)
        return await UsageRecord.objects.filter(request_id=request_id).acount()

    assert await wait_until(written) == 1
    return await UsageRecord.objects.aget(request_id=request_id)


async def test_an_engine_crash_ends_the_requests_in_flight_with_errors_records_them_and_the_engine_restarts(
        fault_switch, api_key, caplog):
    caplog.set_level(logging.INFO, logger="llmserver.engine")
    api = InProcessAPI()
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}]}
    stream_id, plain_id = f"fault-stream-{uuid.uuid4().hex}", f"fault-plain-{uuid.uuid4().hex}"

    response = await api.post("/v1/chat/completions", {**body, "stream": True},
                              {**bearer(api_key), "X-Request-ID": stream_id})
    assert response.status == 200
    chunks = response.chunks()
    first = await anext(chunks)
    assert first.startswith(b"data: ")  # the role chunk
    plain = api.post_later("/v1/chat/completions", body, {**bearer(api_key), "X-Request-ID": plain_id})
    await wait_until(lambda: _running(api, 2))  # both have begun
    # ...and both have sent tokens (a turn with none would begin again instead).
    steps = (await engine_state(api))["steps"]
    await wait_until(lambda: _steps_reached(api, steps + 2))
    os.kill(os.getpid(), signal.SIGUSR1)
    rest = b"".join([chunk async for chunk in chunks])
    events = [line[len("data: "):] for line in (first + rest).decode().splitlines() if line]
    plain_response = await plain.response()

    assert events[-1] == "[DONE]"
    assert json.loads(events[-2]) == ENGINE_ERROR
    received = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert count_answer(40).startswith(received) and received != count_answer(40)
    assert plain_response.status == 500
    assert await plain_response.json() == ENGINE_ERROR

    streamed, answered = await record_for(stream_id), await record_for(plain_id)
    assert (streamed.status_code, streamed.error_code, streamed.finish_reason, streamed.streamed) == (
        200, "engine_error", "error", True)
    assert (answered.status_code, answered.error_code, answered.finish_reason, answered.streamed) == (
        500, "engine_error", "error", False)
    assert streamed.completion_tokens >= 1 and answered.completion_tokens >= 1

    assert (await engine_state(api))["restarts"] == 1
    health = await api.get("/health")
    assert (await health.json())["status"] == "ok"
    again = await api.post("/v1/chat/completions", body, bearer(api_key))
    assert again.status == 200
    assert (await again.json())["choices"][0]["message"]["content"] == count_answer(40)
    assert (await engine_state(api))["running"] == 0
    assert "engine step failed for model llmserver-demo; restarting the engine" in caplog.text


async def _running(api, count: int) -> bool:
    return (await engine_state(api))["running"] == count


async def _steps_reached(api, steps: int) -> bool:
    return (await engine_state(api))["steps"] >= steps
