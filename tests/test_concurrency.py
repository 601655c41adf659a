"""Many clients, one continuously batched engine; nothing blocks the event loop or the
sync thread; a client that leaves frees its slot at once.

Driven in-process (tests/asgi.py) on the demo model served in this process at 5 ms a
step (``in_process_model``), so that a generation is still in flight while the test acts
(the demo model alone counts to 200 in ~60 ms). Each test gets a newly loaded engine:
its counters start at zero."""

import asyncio
import dataclasses
import logging
import warnings

from django.core.asgi import get_asgi_application
from django.utils import timezone

from accounts.models import Lease
from demomodel.corpus import count_answer, count_prompt
from llmserver.handlers import APIHandler, CountArrivals, HTTPRouter
from tests.asgi import InProcessAPI, Response
from tests.conftest import MODEL_ID, bearer, engine_state, sse_body, wait_until


async def read_events(response: Response, count: int) -> None:
    """Read the stream until ``count`` data events have come."""
    seen = 0
    async for chunk in response.chunks():
        seen += chunk.count(b"data: ")
        if seen >= count:
            return
    raise AssertionError(f"the stream ended after {seen} events")


async def test_eight_concurrent_requests_share_engine_steps(in_process_model, api_key):
    api = InProcessAPI()
    before = await engine_state(api)
    assert before["peak_batch"] == 0

    async def ask():
        response = await api.post("/v1/chat/completions", {
            "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}]}, bearer(api_key))
        return await response.json()

    answers = await asyncio.gather(*(ask() for _ in range(8)))

    assert [a["choices"][0]["message"]["content"] for a in answers] == [count_answer(40)] * 8
    after = await engine_state(api)
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
    (authentication, admission): it must not begin a batch alone (inference/batching.py,
    _gathering)."""
    for _ in range(5):
        await _assert_began_as_one_batch(in_process_model, bearer(api_key))


async def test_requests_sent_together_begin_together_without_keys(in_process_model, settings):
    """Without API keys no admission waits on the accounting thread: the request goes from
    the view to the engine without a pause of its own."""
    settings.REQUIRE_API_KEY = False
    for _ in range(5):
        await _assert_began_as_one_batch(in_process_model, {})


async def test_a_client_that_disconnects_mid_stream_cancels_its_turn(in_process_model, api_key, caplog):
    caplog.set_level(logging.INFO, logger="llmserver.access")
    api = InProcessAPI()
    before = await engine_state(api)
    response = await api.post("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True,
    }, {**bearer(api_key), "X-Request-ID": "leaver-1"})
    await read_events(response, 3)
    response.leave()  # the connection closes before the answer is complete
    after = await wait_until(lambda: _finished_since(api, before))
    assert after["turns_finished"] == before["turns_finished"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 100  # counting to 200 takes ~200
    line = await wait_until(lambda: next((m for m in caplog.messages if "rid=leaver-1" in m), None))
    assert line.endswith("client disconnected")


async def _finished_since(api, before: dict) -> dict | None:
    state = await engine_state(api)
    return state if state["running"] == 0 and state["turns_finished"] > before["turns_finished"] else None


async def test_a_non_streaming_generation_never_holds_djangos_sync_thread(in_process_model, api_key):
    """The admin login page is a sync view: Django runs it in its one sync thread. It must
    answer while generations are in flight (if they ran in that thread, it would queue
    behind them). The HTTP application is llmserver.asgi's: the API's chain beside
    Django's own handler for the web site."""
    api = InProcessAPI(CountArrivals(HTTPRouter(api=APIHandler(), web=get_asgi_application())))
    generations = [api.post_later("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(60)}], "n": 4}, bearer(api_key))
        for _ in range(3)]
    await wait_until(lambda: _running(api))
    admin = await api.get("/admin/login/")
    admin_body = (await admin.body()).decode()
    still_generating = (await engine_state(api))["running"] > 0
    results = [await generation.response() for generation in generations]
    assert admin.status == 200
    assert "<form" in admin_body
    assert still_generating
    assert [result.status for result in results] == [200] * 3
    for result in results:
        await result.body()


async def _running(api) -> bool:
    return (await engine_state(api))["running"] > 0


async def test_streams_are_served_as_async_iterators_under_daphne(in_process_model, api_key, caplog):
    """Through the ASGI handler Daphne runs, driven in-process."""
    caplog.set_level(logging.INFO, logger="llmserver.access")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = await InProcessAPI().post("/v1/completions", {
            "model": MODEL_ID, "prompt": "Hi", "max_tokens": 5, "stream": True},
            {**bearer(api_key), "X-Request-ID": "async-iter-1"})
        await response.body()
        await response.finished()
    # Django warns when it must consume a sync iterator in a thread; ours is async, and
    # the access log's end-of-stream line is written only by the async stream wrapper.
    assert not [w for w in caught if "must consume synchronous iterators" in str(w.message)]
    assert not [m for m in caplog.messages if "must consume synchronous iterators" in m]
    line = await wait_until(lambda: next((m for m in caplog.messages if "rid=async-iter-1" in m), None))
    assert line.endswith("stream ended")


async def test_a_stream_arrives_token_by_token(in_process_model, api_key):
    response = await InProcessAPI().post("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(20)}], "stream": True,
    }, bearer(api_key))
    chunks = sse_body(await response.body())[1:-2]  # the content chunks, between the role and the finish
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == count_answer(20)
    # One chunk a token while the client keeps up (5 ms a step here); never one lump.
    assert len(chunks) >= 10


async def test_past_max_concurrent_requests_it_answers_429_and_a_leaving_stream_frees_its_slot(
        in_process_model, api_key, settings):
    # The limit is the deployment's: every lease in the test database counts, so start
    # once other tests' requests have all ended. It is read at each admission.
    await wait_until(lambda: _no_lease_held(), timeout=60)
    settings.MAX_CONCURRENT_REQUESTS = 1
    api = InProcessAPI()
    hello = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
    long_stream = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True}
    response = await api.post("/v1/chat/completions", long_stream, bearer(api_key))
    await read_events(response, 1)
    refused = await api.post("/v1/chat/completions", hello, bearer(api_key))
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert (await refused.json())["error"] == {
        "message": "The server is at its limit of 1 concurrent requests; retry shortly.",
        "type": "rate_limit_error", "param": None, "code": "server_concurrency_limit"}
    # The stream's client left: its slot is free again.
    response.leave()
    await wait_until(lambda: _idle(api))

    async def answered():
        again = await api.post("/v1/chat/completions", hello, bearer(api_key))
        return again.status == 200 and await again.json()

    again = await wait_until(answered, timeout=10)
    assert again["choices"][0]["message"]["content"] == "Hello! How can I help you?"


async def _no_lease_held() -> bool:
    return not await Lease.objects.filter(expires_at__gt=timezone.now()).aexists()


async def _idle(api) -> bool:
    return (await engine_state(api))["running"] == 0
