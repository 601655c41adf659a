"""The HTTP front: request ids, timing, CORS, access log."""

from tests.conftest import MODEL_ID


def test_every_response_carries_a_request_id_and_process_time(api):
    response = api.get("/v1/models")
    assert len(response.headers["X-Request-ID"]) == 32
    assert float(response.headers["X-Process-Time"]) >= 0


def test_a_clients_request_id_is_echoed_and_logged(api, server):
    response = api.get("/v1/models", headers={"X-Request-ID": "trace-abc.123"})
    assert response.headers["X-Request-ID"] == "trace-abc.123"
    assert "GET /v1/models 200 " in server.log()
    assert "rid=trace-abc.123" in server.log()


def test_an_unsafe_request_id_is_replaced(api):
    response = api.get("/v1/models", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(response.headers["X-Request-ID"]) == 32


def test_cors_allows_the_configured_origin_only(api):
    allowed = api.options("/v1/chat/completions", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = api.get("/v1/models", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers


def test_errors_carry_the_request_id_too(api):
    response = api.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert response.status_code == 400
    assert len(response.headers["X-Request-ID"]) == 32


def test_a_stream_is_logged_when_it_ends(api, server):
    with api.stream("POST", "/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 3,
                                                      "stream": True}, headers={"X-Request-ID": "stream-log-1"}) as r:
        r.read()
    assert "POST /v1/completions 200 " in server.log()
    line = next(line for line in server.log().splitlines() if "rid=stream-log-1" in line)
    assert line.endswith("stream ended")


def test_the_admins_static_files_are_served(api):
    response = api.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/css"
    assert b"--body-fg" in response.read()


def test_a_missing_static_file_is_404_json(api):
    assert api.get("/static/admin/css/nope.css").json()["error"]["code"] == "not_found"
