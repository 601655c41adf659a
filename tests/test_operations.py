"""Running it in production (docs/operations.md): static files served by WhiteNoise in
both modes, LOG_FORMAT=json, and database connections reused rather than opened per
request. Real servers, real HTTP."""

from __future__ import annotations

import json
import re
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from demomodel.corpus import count_prompt
from tests import conftest
from tests.conftest import (
    MODEL_ID, ROOT, bearer, collect_static, collected_static_root, issue_key, log_in, make_user, sse_events,
    start_server, wait_for,
)
from tests.test_security import HOST, HTTPS, PRODUCTION

CHAT_CSS = (ROOT / "chat" / "static" / "chat" / "chat.css").read_bytes()
IMMUTABLE = "max-age=315360000, public, immutable"


# --- static files ----------------------------------------------------------------------


def test_a_laptop_server_serves_static_files_from_the_apps_without_collectstatic(server):
    """The shared server runs in laptop mode, started with no collectstatic step."""
    login, admin_login = httpx.get(f"{server.base_url}/login/"), httpx.get(f"{server.base_url}/admin/login/")
    css = httpx.get(f"{server.base_url}/static/chat/chat.css", headers={"X-Request-ID": "laptop-css"})
    admin_css = httpx.get(f"{server.base_url}/static/admin/css/base.css")
    script = httpx.get(f"{server.base_url}/static/chat/chat.js")

    assert (login.status_code, admin_login.status_code) == (200, 200)
    assert '<link rel="stylesheet" href="/static/chat/chat.css">' in login.text
    assert '<link rel="stylesheet" href="/static/admin/css/base.css">' in admin_login.text
    assert (css.status_code, css.headers["content-type"], css.content) == (200, "text/css; charset=\"utf-8\"", CHAT_CSS)
    assert (admin_css.status_code, admin_css.headers["content-type"]) == (200, "text/css; charset=\"utf-8\"")
    assert b"--body-fg" in admin_css.content
    assert (script.status_code, script.headers["content-type"]) == (200, "text/javascript; charset=\"utf-8\"")
    assert css.headers["cache-control"] == "max-age=60, public"  # not hashed: not cached for long
    assert httpx.get(f"{server.base_url}/static/chat/nope.css").json()["error"]["code"] == "not_found"
    # In the access log, as every request (once its last byte is sent).
    line = wait_for(lambda: next((l for l in server.log().splitlines() if "rid=laptop-css" in l), None))
    assert " INFO llmserver.access GET /static/chat/chat.css 200 " in line and "stream ended" not in line


@pytest.fixture
def site(production):
    with httpx.Client(base_url=production.base_url, timeout=60, headers={"Host": HOST, **HTTPS}) as client:
        yield client


def manifest(root) -> dict:
    return json.loads((root / "staticfiles.json").read_text())["paths"]


def test_a_production_server_links_and_serves_hashed_compressed_files_cached_for_ever(site):
    root = collected_static_root()  # what start_server gave the PRODUCTION server
    hashed_css, hashed_admin_css = manifest(root)["chat/chat.css"], manifest(root)["admin/css/base.css"]
    assert re.fullmatch(r"chat/chat\.[0-9a-f]{12}\.css", hashed_css)

    login, admin_login = site.get("/login/"), site.get("/admin/login/")
    assert (login.status_code, admin_login.status_code) == (200, 200)
    assert f'<link rel="stylesheet" href="/static/{hashed_css}">' in login.text
    assert f'<link rel="stylesheet" href="/static/{hashed_admin_css}">' in admin_login.text

    compressed = site.get(f"/static/{hashed_css}", headers={"Accept-Encoding": "gzip"})
    assert compressed.status_code == 200
    assert compressed.headers["content-type"] == "text/css; charset=\"utf-8\""
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.headers["vary"] == "Accept-Encoding, origin"  # origin: CorsMiddleware's
    assert compressed.headers["cache-control"] == IMMUTABLE
    assert int(compressed.headers["content-length"]) == (root / f"{hashed_css}.gz").stat().st_size
    assert compressed.content == CHAT_CSS  # httpx has gunzipped it

    plain = site.get(f"/static/{hashed_css}", headers={"Accept-Encoding": "identity"})
    assert (plain.status_code, plain.content, plain.headers["cache-control"]) == (200, CHAT_CSS, IMMUTABLE)
    assert "content-encoding" not in plain.headers
    assert site.get(f"/static/{hashed_admin_css}").headers["cache-control"] == IMMUTABLE
    # Only what collectstatic gathered: nothing from the apps' folders behind its back.
    assert site.get("/static/chat/nope.css").status_code == 404


def test_production_static_files_go_over_https_like_the_rest(production):
    hashed_css = manifest(collected_static_root())["chat/chat.css"]
    response = httpx.get(f"{production.base_url}/static/{hashed_css}", headers={"Host": HOST}, timeout=10)

    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{HOST}/static/{hashed_css}"


@pytest.mark.server_process
def test_a_production_server_without_collectstatic_stops_with_one_line(tmp_path, live_db):
    empty = tmp_path / "static"
    server = start_server(tmp_path, wait=False, **PRODUCTION, STATIC_ROOT=str(empty))

    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines()[-1] == (  # after the banner, as a model that cannot load
        f"llmserver: PRODUCTION=true serves the static files collectstatic gathered, and "
        f"{empty / 'staticfiles.json'} is missing or unreadable: run python manage.py collectstatic --noinput "
        f"(STATIC_ROOT={empty})")
    assert "Traceback" not in server.log()


@pytest.mark.server_process
def test_a_name_missing_from_the_manifest_is_linked_unhashed_not_a_500(tmp_path, live_db):
    """collectstatic not run again after an upgrade: the manifest lacks names the pages
    link. They are linked by their own names (served if the file was collected, 404 for
    that file alone if not); the pages themselves answer 200, and the start warns."""
    root = tmp_path / "static"
    collect_static(root)
    paths = manifest(root)
    del paths["chat/chat.css"]  # its unhashed copy stays in STATIC_ROOT
    del paths["admin/css/base.css"]
    (root / "staticfiles.json").write_text(json.dumps({"paths": paths, "version": "1.1"}))
    for name in ("admin/css/base.css", "admin/css/base.css.gz"):
        (root / name).unlink()  # not collected at all
    server = start_server(tmp_path, **PRODUCTION, STATIC_ROOT=str(root))
    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers={"Host": HOST, **HTTPS}) as site:
            login, admin_login = site.get("/login/"), site.get("/admin/login/")
            css, admin_css = site.get("/static/chat/chat.css"), site.get("/static/admin/css/base.css")
    finally:
        server.stop()

    assert (login.status_code, admin_login.status_code) == (200, 200)
    assert '<link rel="stylesheet" href="/static/chat/chat.css">' in login.text
    assert '<link rel="stylesheet" href="/static/admin/css/base.css">' in admin_login.text
    assert (css.status_code, css.content, css.headers["cache-control"]) == (200, CHAT_CSS, "max-age=60, public")
    assert admin_css.status_code == 404
    warning = next(line for line in server.log().splitlines() if "llmserver.static" in line)
    assert warning.split(" ", 2)[2] == (
        f"WARNING llmserver.static 2 static files are not in {root / 'staticfiles.json'} "
        f"(admin/css/base.css, chat/chat.css): pages link them unhashed, and those not in {root} are 404; "
        "run python manage.py collectstatic --noinput after every upgrade")


# --- LOG_FORMAT=json --------------------------------------------------------------------


@pytest.mark.server_process
def test_an_unknown_log_format_stops_the_start_with_one_line(tmp_path, live_db):
    server = start_server(tmp_path, wait=False, LOG_FORMAT="xml")

    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines() == ["llmserver: LOG_FORMAT must be plain or json, got 'xml'"]


def _records(server) -> list[dict]:
    """Every line of the server's output, each parsed as JSON (fails on one that is not)."""
    records = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} of the log is not JSON: {line!r}")
    return records


def _access(server, request_id: str) -> dict:
    return wait_for(lambda: next((r for r in _records(server)
                                  if r["logger"] == "llmserver.access" and r.get("request_id") == request_id), None))


@pytest.mark.server_process
def test_json_logs_one_object_per_line_with_the_access_logs_fields(tmp_path, live_db):
    key, secret = issue_key(name="json-logs")
    # 20 ms a step: the request the fault fails is generating when it comes.
    server = start_server(tmp_path, LOG_FORMAT="json", ENGINE_FAULT_INJECTION="true", ENGINE_STEP_DELAY_MS=20)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as api:
            answered = api.post("/v1/chat/completions", headers={"X-Request-ID": "json-log-1"}, json={
                "model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            listed = api.get("/v1/models?api_key=sk-" + "x" * 20)  # no X-Request-ID: the server makes one
            with api.stream("POST", "/v1/completions", headers={"X-Request-ID": "json-log-stream"}, json={
                    "model": MODEL_ID, "prompt": "Hi", "max_tokens": 3, "stream": True}) as streamed:
                events = sse_events(streamed)
            anonymous = httpx.get(f"{server.base_url}/v1/models", headers={"X-Request-ID": "json-log-401"})
            page = httpx.get(f"{server.base_url}/login/", headers={"X-Request-ID": "json-log-page"})
            css = httpx.get(f"{server.base_url}/static/chat/chat.css", headers={"X-Request-ID": "json-log-css"})
            # An exception logged with its traceback: the engine's step fails while a request
            # is generating (one that has produced nothing would begin again in a new engine).
            with ThreadPoolExecutor(1) as pool:
                failing = pool.submit(api.post, "/v1/chat/completions", headers={"X-Request-ID": "json-log-500"},
                                      json={"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(100)}]})
                wait_for(lambda: server.engine()["running"] == 1)
                steps = server.engine()["steps"]
                wait_for(lambda: server.engine()["steps"] >= steps + 2)
                server.process.send_signal(signal.SIGUSR1)
                failed = failing.result(60)
        assert (answered.status_code, listed.status_code, anonymous.status_code, page.status_code, css.status_code,
                failed.status_code) == (200, 200, 401, 200, 200, 500)
        assert events[-1] == "[DONE]"

        one = _access(server, "json-log-1")
        made_up = _access(server, listed.headers["X-Request-ID"])
        stream = _access(server, "json-log-stream")
        refused, web, static, error = (_access(server, rid) for rid in (
            "json-log-401", "json-log-page", "json-log-css", "json-log-500"))
    finally:
        server.stop()

    records = _records(server)  # the whole log, the shutdown's lines included
    assert {"time", "level", "logger", "message"} <= set(records[0])
    for record in records:
        stamp = datetime.fromisoformat(record["time"])
        assert record["time"].endswith("Z") and stamp.tzinfo == timezone.utc
        assert timedelta(0) <= datetime.now(timezone.utc) - stamp < timedelta(minutes=10)
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert any(r["logger"] == "llmserver" and r["message"].startswith(f"serving {MODEL_ID} on http://")
               for r in records)
    assert any(r["logger"] == "llmserver.shutdown" for r in records)

    duration = one.pop("duration_ms")
    assert isinstance(duration, float) and duration > 0
    assert one.pop("time") and one.pop("message").startswith(f"POST /v1/chat/completions 200 {duration:.1f}ms "
                                                             "rid=json-log-1")
    assert one == {"level": "INFO", "logger": "llmserver.access", "request_id": "json-log-1", "method": "POST",
                   "path": "/v1/chat/completions", "status": 200, "client": "127.0.0.1",
                   "key_prefix": key.prefix, "model": MODEL_ID}
    assert (made_up["request_id"], made_up["path"], made_up["status"], made_up["key_prefix"]) == (
        listed.headers["X-Request-ID"], "/v1/models?api_key=sk-***", 200, key.prefix)
    assert len(made_up["request_id"]) == 32 and "model" not in made_up and "outcome" not in made_up
    assert (stream["path"], stream["status"], stream["outcome"], stream["model"]) == (
        "/v1/completions", 200, "stream ended", MODEL_ID)
    assert (refused["path"], refused["status"]) == ("/v1/models", 401)
    assert "key_prefix" not in refused
    assert (web["method"], web["path"], web["status"]) == ("GET", "/login/", 200)
    assert "key_prefix" not in web
    assert (static["path"], static["status"]) == ("/static/chat/chat.css", 200)
    assert "outcome" not in static
    assert (error["status"], error["model"]) == (500, MODEL_ID)

    crash = next(r for r in records if r["message"] == f"engine step failed for model {MODEL_ID}; restarting the engine")
    assert (crash["level"], crash["logger"]) == ("ERROR", "llmserver.engine")
    assert crash["exception"].startswith("Traceback (most recent call last):\n")
    assert "\n" not in json.dumps(crash)  # one line, the traceback's newlines escaped


def test_plain_logs_stay_as_they_were(server, api):
    api.get("/v1/models", headers={"X-Request-ID": "plain-log-1"})
    line = wait_for(lambda: next((l for l in server.log().splitlines() if "rid=plain-log-1" in l), None))

    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO llmserver\.access GET /v1/models 200 "
                        r"\d+\.\dms rid=plain-log-1.*", line)


# --- connection reuse -------------------------------------------------------------------


def _backends(application_name: str) -> set:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s",
                       [application_name])
        return set(cursor.fetchall())


@pytest.mark.server_process
def test_postgresql_connections_are_reused_not_opened_per_request(tmp_path, live_db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): SQLite has no server connections to count")
    application_name = f"llmserver-reuse-{uuid.uuid4().hex[:8]}"
    server = start_server(tmp_path, DATABASE_URL=f"{conftest.test_database_url()}?application_name={application_name}")
    key, secret = issue_key(name="reuse")
    user = make_user("reuse")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as api, \
                log_in(server, user.username) as browser:

            def traffic(rounds: int) -> None:
                for _ in range(rounds):
                    assert api.get("/v1/models").status_code == 200  # the key looked up
                    response = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1})
                    assert response.status_code == 200  # admitted, leased, settled, recorded
                    assert browser.get("/").status_code == 200  # a session and a user read in a request thread

            traffic(5)  # the pool and the accounting thread have their connections
            before = _backends(application_name)
            traffic(25)  # 50 API requests, 25 page loads
            after = _backends(application_name)
    finally:
        server.stop()

    assert 1 <= len(before) <= 3
    assert after == before  # the same backends, none opened (or closed and reopened) since
