"""The HTTP front: request ids, timing, CORS, access log."""

import pytest

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
    assert response.headers["content-type"] == 'text/css; charset="utf-8"'  # WhiteNoise names the charset
    assert b"--body-fg" in response.read()


def test_a_missing_static_file_is_404_json(api):
    assert api.get("/static/admin/css/nope.css").json()["error"]["code"] == "not_found"


def test_api_paths_get_the_security_headers_and_no_session_or_csrf_cookie(api):
    """The API paths run the slim async chain (llmserver/handlers.py): security headers
    still, but no session, CSRF or clickjacking middleware."""
    for response in (api.get("/v1/models"), api.get("/health"), api.post("/v1/completions", json={})):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "set-cookie" not in response.headers
        assert "x-frame-options" not in response.headers
        assert int(response.headers["Content-Length"]) == len(response.content)


@pytest.mark.parametrize("path", ["/v1/models", "/metrics", "/login/"])
def test_a_host_not_in_allowed_hosts_is_400_on_api_and_web_paths(api, path):
    """A page elsewhere reaching a server on loopback by DNS rebinding sends its own Host."""
    response = api.get(path, headers={"Host": "rebound.example.com"})
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "Bad request.", "type": "invalid_request_error",
                                         "param": None, "code": "bad_request"}}


def test_health_answers_whatever_the_host_for_load_balancers_probing_by_address(api):
    assert api.get("/health", headers={"Host": "10.0.0.7:8000"}).status_code == 200


def test_web_paths_keep_the_full_middleware(api):
    page = api.get("/login/")
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "csrftoken=" in page.headers["set-cookie"]
    # CSRF is enforced there: a login POST without the token is refused.
    refused = api.post("/login/", data={"username": "a", "password": "b"})
    assert refused.status_code == 403


def test_the_api_chain_refuses_a_middleware_that_is_not_async(settings):
    from llmserver.handlers import APIHandler

    settings.API_MIDDLEWARE = ["corsheaders.middleware.CorsMiddleware", "llmserver.handlers.APISecurityMiddleware"]
    APIHandler()
    settings.API_MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
    with pytest.raises(RuntimeError, match="through sync_to_async"):
        APIHandler()
    settings.API_MIDDLEWARE = ["tests.test_http.inline_view_hook"]
    with pytest.raises(RuntimeError, match="process_view hook"):
        APIHandler()
    settings.API_MIDDLEWARE = ["tests.test_http.sync_only_middleware"]
    with pytest.raises(RuntimeError, match="not async-capable"):
        APIHandler()


def sync_only_middleware(get_response):
    return get_response


class inline_view_hook:
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response

    def process_view(self, request, view, args, kwargs):
        return None
