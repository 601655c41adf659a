"""One request lifecycle (inference/lifecycle.py) for the API and the chat page: each
way a generation request can end, taken once over HTTP (a streamed chat completion) and
once over the chat socket, with the same key, prompt and settings, leaves the same usage
record and the same metrics.

The exits: answered; refused by each limit (requests, tokens and budget of the key, its
concurrency, the deployment's concurrency, a model it may not use), and refused as
invalid or for an unknown model; the client gone before the engine began the answer
(waiting behind a full batch) and while it streamed; the engine failing mid-answer; the
engine stopped mid-answer, as a drain past its grace time stops it.

Driven in-process: the API through tests/asgi.py, the socket through Channels'
WebsocketCommunicator, the user's chat key given a secret so that both go in as the
same key; the demo model served at 20 ms a step."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import pytest

from accounts.books import books
from accounts.models import APIKey, UsageRecord
from demomodel.corpus import count_prompt, repeat_prompt
from inference.metrics import REGISTRY
from inference.registry import registry
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, engine_state, issue_key, make_user, model_in_process, wait_until
from tests.test_chat_socket import Page, chat_socket, log_in

BATCH = 4  # sequences one engine step serves here
# A record's fields that say how its request ended (not which request, when or how long).
ENDING = ("api_key_id", "model", "streamed", "user", "status_code", "error_code", "client_disconnected",
          "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens")


@pytest.fixture(scope="module")
def engine(live_db):
    with model_in_process(0.02) as worker:
        assert worker.batch_limit == BATCH
        yield worker


class Both:
    """The same user over HTTP (with the chat key's secret) and on the chat page."""

    def __init__(self, user, secret: str, page: Page):
        self.user, self.secret, self.page = user, secret, page
        self.api = InProcessAPI()

    async def key(self) -> APIKey:
        return await APIKey.objects.aget(pk=self.page_key_id)

    def body(self, content: str, **fields) -> dict:
        return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "temperature": 0,
                "max_tokens": 20, **fields}

    async def http(self, content: str, *, leave_after: int | None = None, during=None, **fields) -> str:
        """A streamed chat completion; its request id. ``leave_after``: the client leaves
        once that many events arrived; ``during``: awaited after the first content event."""
        request_id = f"life-{uuid.uuid4().hex}"
        response = await self.api.post("/v1/chat/completions", {**self.body(content, **fields), "stream": True,
                                                                "user": self.user.username},
                                       {**bearer(self.secret), "X-Request-ID": request_id})
        if response.status != 200:
            await response.body()
            return request_id
        events = 0
        async for chunk in response.chunks():
            events += chunk.count(b"data: ")
            if during is not None and b'"content":"' in chunk and b'"content":""' not in chunk:
                await during()
                during = None
            if leave_after is not None and events >= leave_after:
                await response.disconnect()
                break
        return request_id

    async def socket(self, content: str, *, stop_after: int | None = None, during=None, **fields) -> str:
        """A chat turn; its request id. ``stop_after``: Stop once that many frames
        arrived; ``during``: awaited after the first delta."""
        chat_id = uuid.uuid4().hex[:12]
        message = {"type": "chat", "id": chat_id, **self.body(content, **fields)}
        await self.page.send(json.dumps(message))
        request_id, frames = None, 0
        while True:
            frame = await self.page.receive()
            frames += 1
            request_id = frame.get("request_id", request_id)
            if during is not None and frame["type"] == "delta":
                await during()
                during = None
            if stop_after is not None and frames == stop_after:
                await self.page.send(json.dumps({"type": "stop", "id": chat_id}))
                stop_after = None
            if frame["type"] in ("done", "error"):
                assert request_id is not None, frame
                return request_id


@pytest.fixture
async def both(engine):
    user = await asyncio.to_thread(make_user, "life")
    page = await chat_socket(await log_in(user.username))
    key = await books.call(APIKey.objects.chat_key_for, user)
    secret = key.set_new_secret()
    await key.asave(update_fields=["prefix", "hashed_secret"])
    both = Both(user, secret, page)
    both.page_key_id = key.pk
    yield both
    await page.close()


async def record(request_id: str) -> UsageRecord:
    async def written():
        assert await asyncio.to_thread(books.flush)
        return await UsageRecord.objects.filter(request_id=request_id).afirst()

    return await wait_until(written)


def ending(record: UsageRecord) -> dict:
    return {name: getattr(record, name) for name in ENDING}


def counted() -> dict:
    """The request metrics' samples now: {(name, labels...): value}."""
    samples = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith(("llmserver:requests_total", "llmserver:prompt_tokens_total",
                                       "llmserver:generation_tokens_total", "llmserver:e2e_request_latency_seconds_count",
                                       "llmserver:time_to_first_token_seconds_count")):
                labels = dict(sample.labels)
                labels.pop("endpoint", None)  # the one difference: chat.completions or chat.page
                samples[(sample.name, *sorted(labels.items()))] = samples.get(
                    (sample.name, *sorted(labels.items())), 0) + sample.value
    return samples


def change(before: dict, after: dict) -> dict:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


async def each_way(both: Both, send_http, send_socket) -> tuple[dict, dict]:
    """The record and metrics change of the same request over HTTP and over the socket."""
    results = []
    for send in (send_http, send_socket):
        before = counted()
        request_id = await send()
        found = await record(request_id)
        results.append((ending(found), change(before, counted()), found.endpoint))
    (http, http_metrics, http_endpoint), (socket, socket_metrics, socket_endpoint) = results
    assert (http_endpoint, socket_endpoint) == ("chat.completions", "chat.page")
    # The same samples counted, and the tokens as recorded (how many a request cut short
    # generated depends on timing).
    for ended, metrics in ((http, http_metrics), (socket, socket_metrics)):
        for name, tokens in (("prompt", ended["prompt_tokens"]), ("generation", ended["completion_tokens"])):
            assert metrics.pop((f"llmserver:{name}_tokens_total", ("model", MODEL_ID)), 0) == tokens
    assert http_metrics == socket_metrics
    return http, socket


async def test_answered(both):
    http, socket = await each_way(both, lambda: both.http(repeat_prompt("owl")),
                                  lambda: both.socket(repeat_prompt("owl")))
    assert http == socket
    assert (http["status_code"], http["error_code"], http["finish_reason"], http["client_disconnected"]) == (
        200, "", "stop", False)
    assert http["completion_tokens"] > 0


LIMITS = [
    ({"requests_per_minute": 0}, 429, "requests_per_minute_limit"),
    ({"tokens_per_minute": 0}, 429, "tokens_per_minute_limit"),
    ({"token_budget": 0}, 429, "token_budget_exceeded"),
    ({"cost_budget": Decimal(0)}, 429, "cost_budget_exceeded"),
    ({"max_concurrency": 0}, 429, "key_concurrency_limit"),
    ({"allowed_models": ["another-model"]}, 403, "model_not_allowed"),
]


@pytest.mark.parametrize("limits, status, code", LIMITS, ids=[code for _, _, code in LIMITS])
async def test_refused_by_a_limit_of_the_key(both, limits, status, code):
    await APIKey.objects.filter(pk=both.page_key_id).aupdate(**limits)
    http, socket = await each_way(both, lambda: both.http("Hello"), lambda: both.socket("Hello"))
    assert http == socket
    assert (http["status_code"], http["error_code"], http["prompt_tokens"], http["completion_tokens"]) == (
        status, code, 0, 0)


async def test_refused_by_the_deployment_limit(both, settings):
    settings.MAX_CONCURRENT_REQUESTS = 0
    http, socket = await each_way(both, lambda: both.http("Hello"), lambda: both.socket("Hello"))
    assert http == socket
    assert (http["status_code"], http["error_code"]) == (429, "server_concurrency_limit")


REFUSED = [
    ({"max_tokens": -1}, 400, "invalid_value", MODEL_ID),
    ({"model": "no-such-model"}, 404, "model_not_found", "no-such-model"),
]


@pytest.mark.parametrize("fields, status, code, model", REFUSED, ids=[code for _, _, code, _ in REFUSED])
async def test_refused_as_asked(both, fields, status, code, model):
    http, socket = await each_way(both, lambda: both.http("Hello", **fields), lambda: both.socket("Hello", **fields))
    assert http == socket
    assert (http["status_code"], http["error_code"], http["model"]) == (status, code, model)


async def test_client_gone_while_streaming(both):
    # After the role chunk and two pieces of text; on the page, after "start" and two deltas.
    http, socket = await each_way(both, lambda: both.http(count_prompt(200), max_tokens=400, leave_after=3),
                                  lambda: both.socket(count_prompt(200), max_tokens=400, stop_after=3))
    assert (http["status_code"], http["client_disconnected"]) == (socket["status_code"], socket["client_disconnected"]) \
        == (200, True)
    assert http["completion_tokens"] > 0 and socket["completion_tokens"] > 0


async def test_client_gone_before_the_engine_began(both):
    holder, secret = await asyncio.to_thread(issue_key, name=f"life-{uuid.uuid4().hex[:6]}")
    api = InProcessAPI()
    long = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "max_tokens": 400,
            "stream": True}
    streams = []
    for running in range(1, BATCH + 1):  # every slot of the batch held by a long stream
        streams.append(await api.post("/v1/chat/completions", long, bearer(secret)))
        await anext(streams[-1].chunks())
        await wait_until(lambda: _state_is(api, running=running, queued=0))
    try:
        # The role chunk (HTTP) and "start" (the page) come before the engine begins.
        http, socket = await each_way(both, lambda: both.http("Hello", leave_after=1),
                                      lambda: both.socket("Hello", stop_after=1))
    finally:
        for stream in streams:
            await stream.disconnect()
    assert http == socket
    assert (http["status_code"], http["client_disconnected"], http["prompt_tokens"], http["completion_tokens"]) == (
        499, True, 0, 0)


async def _state_is(api, **expected) -> bool:
    state = await engine_state(api)
    return all(state[name] == value for name, value in expected.items())


async def test_engine_failure_mid_answer(both):
    async def crash():
        for worker in registry.workers():
            worker.inject_fault()

    http, socket = await each_way(both, lambda: both.http(count_prompt(200), max_tokens=400, during=crash),
                                  lambda: both.socket(count_prompt(200), max_tokens=400, during=crash))
    assert (http["status_code"], http["error_code"], http["finish_reason"]) == (
        socket["status_code"], socket["error_code"], socket["finish_reason"]) == (200, "engine_error", "error")


async def test_engine_stopped_mid_answer(both):
    async def stop():
        await asyncio.to_thread(registry.workers()[0].stop)

    http, socket = await each_way(both, lambda: both.http(count_prompt(200), max_tokens=400, during=stop),
                                  lambda: both.socket(count_prompt(200), max_tokens=400, during=stop))
    assert (http["status_code"], http["error_code"], http["finish_reason"]) == (
        socket["status_code"], socket["error_code"], socket["finish_reason"]) == (200, "server_shutting_down", "error")
