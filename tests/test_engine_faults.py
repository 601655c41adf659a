"""A crash inside the engine thread of a running server (the test-only switch of
inference/faults.py: SIGUSR1): the requests in flight end with OpenAI-shaped errors
(in-stream for a stream), their usage is recorded with the error, the engine restarts
and the next request is answered."""

import json
import signal
import threading
import uuid

import httpx

from demomodel.corpus import count_answer, count_prompt
from tests.conftest import MODEL_ID, bearer, server_record_for as record_for, start_server, wait_for

ENGINE_ERROR = {"error": {
    "message": "The model failed while generating: engine failure: injected engine fault",
    "type": "server_error", "param": None, "code": "engine_error"}}


def test_an_engine_crash_ends_the_requests_in_flight_with_errors_records_them_and_the_engine_restarts(
        tmp_path, live_db, api_key):
    # 20 ms a step: a 40-number answer takes most of a second, long enough to crash it.
    server = start_server(tmp_path, ENGINE_FAULT_INJECTION="true", ENGINE_STEP_DELAY_MS=20)
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}]}
    stream_id, plain_id = f"fault-stream-{uuid.uuid4().hex}", f"fault-plain-{uuid.uuid4().hex}"
    plain = {}

    def post_plain():
        plain["response"] = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                                       headers={**bearer(api_key), "X-Request-ID": plain_id})

    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(api_key)) as client:
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                               headers={"X-Request-ID": stream_id}) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")  # the role chunk
                other = threading.Thread(target=post_plain)
                other.start()
                wait_for(lambda: server.engine()["running"] == 2, timeout=30)  # both have begun
                # ...and both have sent tokens (a turn with none would begin again instead).
                steps = server.engine()["steps"]
                wait_for(lambda: server.engine()["steps"] >= steps + 2, timeout=30)
                server.process.send_signal(signal.SIGUSR1)
                events = [line[len("data: "):] for line in lines if line]
            other.join(60)

        assert events[-1] == "[DONE]"
        assert json.loads(events[-2]) == ENGINE_ERROR
        received = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2])
        assert count_answer(40).startswith(received) and received != count_answer(40)
        assert plain["response"].status_code == 500
        assert plain["response"].json() == ENGINE_ERROR

        streamed, answered = record_for(stream_id), record_for(plain_id)
        assert (streamed.status_code, streamed.error_code, streamed.finish_reason, streamed.streamed) == (
            200, "engine_error", "error", True)
        assert (answered.status_code, answered.error_code, answered.finish_reason, answered.streamed) == (
            500, "engine_error", "error", False)
        assert streamed.completion_tokens >= 1 and answered.completion_tokens >= 1

        assert server.engine()["restarts"] == 1
        assert server.health()["status"] == "ok"
        again = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=bearer(api_key), timeout=60)
        assert again.status_code == 200
        assert again.json()["choices"][0]["message"]["content"] == count_answer(40)
        assert server.engine()["running"] == 0
    finally:
        server.stop()
    assert "engine step failed for model llmserver-demo; restarting the engine" in server.log()
