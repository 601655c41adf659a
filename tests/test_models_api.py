"""GET /v1/models and /health."""

import llmserver
from tests.conftest import MODEL_ID


def test_it_lists_the_served_model(api):
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [(MODEL_ID, "model", "llmserver")]
    assert isinstance(body["data"][0]["created"], int)


def test_it_shows_one_model(api):
    assert api.get(f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID


def test_an_unknown_model_is_404(api):
    response = api.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_health_reports_the_running_engine(api):
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == llmserver.__version__
    assert body["model"] == MODEL_ID
    engine = body["models"][0]
    assert (engine["id"], engine["state"], engine["max_batch_size"], engine["context_length"]) == (MODEL_ID, "loaded", 16, 512)


def test_each_model_shows_its_max_model_len(api):
    """The demo model's context is its genai_config.json's 512, under MAX_MODEL_LEN 4096."""
    assert [m["max_model_len"] for m in api.get("/v1/models").json()["data"]] == [512]
    assert api.get(f"/v1/models/{MODEL_ID}").json()["max_model_len"] == 512
