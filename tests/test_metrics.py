"""``GET /metrics``: Prometheus text for admin keys (or allowed addresses) only; each
request counted once when it ends, its tokens and latencies observed; the engines'
state read at scrape time; bounded labels."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demomodel.corpus import repeat_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, start_server


@pytest.fixture(scope="module")
def admin_key(live_db):
    return issue_key(name="metrics-admin", is_admin=True)[1]


def scrape(server, admin_key) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample."""
    response = httpx.get(f"{server.base_url}/metrics", headers=bearer(admin_key))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_only_admin_keys_read_the_metrics(server, api_key):
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    refused = httpx.get(f"{server.base_url}/metrics", headers=bearer(api_key))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_key_required")


def test_a_request_is_counted_once_with_its_tokens_and_latencies(server, api, admin_key):
    before = scrape(server, admin_key)
    answer = api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": repeat_prompt("tiger lemon")}]}).json()
    refused = api.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 404
    after = scrape(server, admin_key)

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


def test_the_engine_state_is_read_at_scrape_time(server, admin_key):
    samples = scrape(server, admin_key)
    assert value(samples, "llmserver:models_loaded") == 1
    assert value(samples, "llmserver:num_requests_running", model=MODEL_ID) == 0
    assert value(samples, "llmserver:batch_occupancy", model=MODEL_ID) == 0
    assert value(samples, "llmserver:engine_steps_total", model=MODEL_ID) > 0


def test_an_allowed_address_needs_no_key(tmp_path, live_db):
    server = start_server(tmp_path, METRICS_ALLOWED_IPS="127.0.0.1")
    try:
        response = httpx.get(f"{server.base_url}/metrics")
        assert response.status_code == 200
        assert "llmserver:models_loaded" in response.text
    finally:
        server.stop()
