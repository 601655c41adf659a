"""``GET /metrics``: Prometheus text for admin keys (or allowed addresses) only; each
request counted once when it ends, its tokens and latencies observed; the engines'
state read at scrape time; bounded labels.

Driven in-process (tests/asgi.py) on the demo model served in this process; the
counters are this process's, so each test reads the change its own requests made."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from demomodel.corpus import repeat_prompt
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, issue_key, model_in_process


@pytest.fixture(scope="module")
def model(live_db):
    with model_in_process() as worker:
        yield worker


@pytest.fixture
def api(model) -> InProcessAPI:
    return InProcessAPI()


@pytest.fixture(scope="module")
def admin_key(live_db):
    return issue_key(name="metrics-admin", is_admin=True)[1]


async def scrape(api, admin_key) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample."""
    response = await api.get("/metrics", bearer(admin_key))
    text = (await response.body()).decode()
    assert response.status == 200, text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def chat(api, api_key, model: str, content: str):
    return await api.post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": content}]},
                          bearer(api_key))


async def test_only_admin_keys_read_the_metrics(api, api_key):
    assert (await api.get("/metrics")).status == 401
    refused = await api.get("/metrics", bearer(api_key))
    assert (refused.status, (await refused.json())["error"]["code"]) == (403, "admin_key_required")


async def test_a_request_is_counted_once_with_its_tokens_and_latencies(api, api_key, admin_key):
    before = await scrape(api, admin_key)
    answer = await (await chat(api, api_key, MODEL_ID, repeat_prompt("tiger lemon"))).json()
    refused = await chat(api, api_key, "gpt-9", "hi")
    assert refused.status == 404
    await refused.body()
    after = await scrape(api, admin_key)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"endpoint": "chat.completions", "model": MODEL_ID, "status": "200"}
    assert delta("llmserver:requests_total", **ok) == 1
    assert delta("llmserver:requests_total", endpoint="chat.completions", model="unknown", status="404") == 1
    assert delta("llmserver:prompt_tokens_total", model=MODEL_ID) == answer["usage"]["prompt_tokens"]
    assert delta("llmserver:generation_tokens_total", model=MODEL_ID) == answer["usage"]["completion_tokens"] == 2
    for histogram in ("llmserver:time_to_first_token_seconds", "llmserver:inter_token_latency_seconds",
                      "llmserver:e2e_request_latency_seconds"):
        assert delta(f"{histogram}_count", model=MODEL_ID) == 1, histogram
    # Labels never carry keys, users, request ids or raw model names.
    labels = {label for (_, pairs) in after for label in pairs}
    assert not any(v.startswith("sk-") or v == "gpt-9" for _, v in labels)


async def test_the_engine_state_is_read_at_scrape_time(api, api_key, admin_key):
    answered = await chat(api, api_key, MODEL_ID, repeat_prompt("tiger lemon"))  # steps for this test to see
    assert answered.status == 200
    await answered.body()
    samples = await scrape(api, admin_key)
    assert value(samples, "llmserver:models_loaded") == 1
    assert value(samples, "llmserver:num_requests_running", model=MODEL_ID) == 0
    assert value(samples, "llmserver:batch_occupancy", model=MODEL_ID) == 0
    assert value(samples, "llmserver:engine_steps_total", model=MODEL_ID) > 0


async def test_an_allowed_address_needs_no_key(api, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]  # read at each scrape; the client here is 127.0.0.1
    response = await api.get("/metrics")
    assert response.status == 200
    assert "llmserver:models_loaded" in (await response.body()).decode()
