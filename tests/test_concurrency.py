"""Many clients, one continuously batched engine; nothing blocks the event loop or the
sync thread; a client that leaves frees its slot at once."""

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.utils import timezone

from accounts.models import Lease
from demomodel.corpus import count_answer, count_prompt
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, sse_events, start_server, wait_for


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, live_db):
    """A server no other test has used, so its engine counters start at zero. Its engine
    sleeps 5 ms before each step, like a bigger model, so that a generation is still in
    flight while the test acts (the demo model alone counts to 200 in ~60 ms)."""
    live = start_server(tmp_path_factory.mktemp("fresh"), ENGINE_STEP_DELAY_MS=5)
    yield live
    live.stop()




def test_eight_concurrent_requests_share_engine_steps(fresh_server, api_key):
    before = fresh_server.engine()
    assert before["peak_batch"] == 0

    def ask(_):
        with httpx.Client(base_url=fresh_server.base_url, timeout=120, headers=bearer(api_key)) as client:
            return client.post("/v1/chat/completions", json={
                "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}]}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))

    assert [a["choices"][0]["message"]["content"] for a in answers] == [count_answer(40)] * 8
    after = fresh_server.engine()
    # One engine step produced a token for as many of the eight as the engine can serve
    # at once: onnxruntime-genai 0.18's CPU scheduler serves 4 per step on this machine
    # whatever MAX_BATCH_SIZE says; the worker measures that limit when it loads.
    assert after["batch_limit"] == min(8, after["max_batch_size"], 4)
    assert after["peak_batch"] == after["batch_limit"]
    generated = sum(a["usage"]["completion_tokens"] for a in answers)
    # Served one at a time this would take one step per token; batched, far fewer.
    assert after["steps"] - before["steps"] < generated / 2
    assert (after["running"], after["waiting"]) == (0, 0)


async def _assert_began_as_one_batch(worker, headers: dict) -> None:
    """As many requests as one step serves, sent together, begin in one batch: each step
    then gives each of them a token, and no batch re-forms to take a late one in.

    Sent in-process (tests/asgi.py), they reach the application in one turn of the event
    loop, as requests Daphne reads in one pass over its sockets do; over real sockets a
    busy CPU can hold the client back between two sends, and the burst is not one."""
    api, limit = InProcessAPI(), worker.batch_limit
    before = dataclasses.replace(worker.stats)
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}]}
    responses = await asyncio.gather(*(api.post("/v1/chat/completions", body, headers) for _ in range(limit)))
    assert [response.status for response in responses] == [200] * limit
    answers = [await response.json() for response in responses]
    assert [a["choices"][0]["message"]["content"] for a in answers] == [count_answer(40)] * limit
    after = worker.stats
    tokens = {a["usage"]["completion_tokens"] for a in answers}
    assert len(tokens) == 1
    assert after.reforms - before.reforms == 0
    # One step a token, and one more whose token is the end of the turn (EOS: not a
    # completion token). Begun one after another they would take a batch each.
    assert after.steps - before.steps == tokens.pop() + 1
    assert after.turns_started - before.turns_started == limit


async def test_requests_sent_together_begin_together(in_process_model, api_key):
    """The first of a burst reaches an idle engine while the others are still on their way
    (authentication, admission): it must not begin a batch alone (inference/engine.py,
    _gathering)."""
    for _ in range(5):
        await _assert_began_as_one_batch(in_process_model, bearer(api_key))


async def test_requests_sent_together_begin_together_without_keys(in_process_model, settings):
    """Without API keys no admission waits on the accounting thread: the request goes from
    the view to the engine without a pause of its own."""
    settings.REQUIRE_API_KEY = False
    for _ in range(5):
        await _assert_began_as_one_batch(in_process_model, {})


def test_a_client_that_disconnects_mid_stream_cancels_its_turn(fresh_server, api_key):
    before = fresh_server.engine()
    with httpx.Client(base_url=fresh_server.base_url, timeout=60, headers=bearer(api_key)) as client:
        with client.stream("POST", "/v1/chat/completions", headers={"X-Request-ID": "leaver-1"}, json={
            "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True,
        }) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(line for line in lines if line.startswith("data: "))
        # Leaving the block closes the connection before the answer is complete.
    after = wait_for(lambda: (e := fresh_server.engine())["running"] == 0 and e["turns_finished"] > before["turns_finished"] and e)
    assert after["turns_finished"] == before["turns_finished"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 100  # counting to 200 takes ~200
    line = wait_for(lambda: next((l for l in fresh_server.log().splitlines() if "rid=leaver-1" in l), None))
    assert line.endswith("client disconnected")


def test_a_non_streaming_generation_never_holds_djangos_sync_thread(fresh_server, api_key):
    """The admin login page is a sync view: Django runs it in its one sync thread. It must
    answer while generations are in flight (if they ran in that thread, it would queue
    behind them)."""
    with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=fresh_server.base_url, timeout=120, headers=bearer(api_key)) as client:
        futures = [pool.submit(client.post, "/v1/chat/completions", json={
            "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(60)}], "n": 4})
            for _ in range(3)]
        wait_for(lambda: fresh_server.engine()["running"] > 0)
        admin = client.get("/admin/login/")
        still_generating = fresh_server.engine()["running"] > 0
        results = [f.result() for f in futures]
    assert admin.status_code == 200
    assert "<form" in admin.text
    assert still_generating
    assert all(r.status_code == 200 for r in results)


def test_streams_are_served_as_async_iterators_under_daphne(fresh_server, api_key):
    with httpx.Client(base_url=fresh_server.base_url, timeout=60, headers=bearer(api_key)) as client:
        with client.stream("POST", "/v1/completions", headers={"X-Request-ID": "async-iter-1"},
                           json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 5, "stream": True}) as response:
            response.read()
    log = fresh_server.log()
    # Django warns when it must consume a sync iterator in a thread; ours is async, and
    # the access log's end-of-stream line is written only by the async stream wrapper.
    assert "must consume synchronous iterators" not in log
    assert next(l for l in log.splitlines() if "rid=async-iter-1" in l).endswith("stream ended")


def test_a_stream_arrives_token_by_token(fresh_server, api_key):
    with httpx.Client(base_url=fresh_server.base_url, timeout=60, headers=bearer(api_key)) as client:
        with client.stream("POST", "/v1/chat/completions", json={
            "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(20)}], "stream": True,
        }) as response:
            chunks = sse_events(response)[1:-2]  # the content chunks, between the role and the finish
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == count_answer(20)
    # One chunk a token while the client keeps up (5 ms a step here); never one lump.
    assert len(chunks) >= 10


def test_past_max_concurrent_requests_it_answers_429_and_a_leaving_stream_frees_its_slot(tmp_path, api_key):
    # The limit is the deployment's: every lease in the shared test database counts, so
    # start once other tests' requests have all ended.
    wait_for(lambda: not Lease.objects.filter(expires_at__gt=timezone.now()).exists(), timeout=60)
    server = start_server(tmp_path, MAX_CONCURRENT_REQUESTS=1, ENGINE_STEP_DELAY_MS=5)
    try:
        long_stream = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True}
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(api_key)) as client:
            with client.stream("POST", "/v1/chat/completions", json=long_stream) as response:
                lines = response.iter_lines()  # kept: closing it would close the stream
                assert next(lines).startswith("data: ")
                refused = client.post("/v1/chat/completions", json={
                    "model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"] == {
                "message": "The server is at its limit of 1 concurrent requests; retry shortly.",
                "type": "rate_limit_error", "param": None, "code": "server_concurrency_limit"}
            # The stream's client left: its slot is free again.
            wait_for(lambda: server.engine()["running"] == 0)
            again = wait_for(lambda: (r := client.post("/v1/chat/completions", json={
                "model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})).status_code == 200 and r, timeout=10)
            assert again.json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"
    finally:
        server.stop()
