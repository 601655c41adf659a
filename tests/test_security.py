"""Security: the production switch (PRODUCTION=true) passes ``check --deploy`` and
refuses to start without what it needs; secrets are stored hashed and never logged; the
admin is behind a staff login with CSRF; the chat socket checks its session; every page
carries the security headers, and in production HSTS and the redirect to HTTPS.

The chat socket's Origin checks are in tests/test_chat_origin.py, its anonymous checks in
tests/test_chat_socket.py (test_an_anonymous_socket_is_refused,
test_a_socket_from_another_site_is_refused_even_with_a_session,
test_a_logged_out_session_no_longer_opens_a_socket); the ones here add forged and stale
sessions."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import (
    MODEL_ID, PASSWORD, PRODUCTION, PRODUCTION_HOST, ROOT, bearer, chat, chat_socket, issue_key, log_in, make_user,
    server_env, sse_events, start_server,
)

HOST = PRODUCTION_HOST
HSTS = "max-age=31536000; includeSubDomains"
# The chat and login pages' policy (chat/views.py), spelled out.
CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
NEW_SECRET = re.compile(r'<code class="new-api-key">(sk-[A-Za-z0-9_-]+)</code>')
KEYS_URL = "/admin/accounts/apikey/"
# What the environment may hold that would change which mode a command runs in.
_SECURITY_VARIABLES = ("PRODUCTION", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "TRUST_X_FORWARDED_PROTO",
                       "CSRF_TRUSTED_ORIGINS", "SECURE_HSTS_SECONDS", "SECURE_HSTS_PRELOAD")


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``manage.py`` as a real process, with only ``env``'s security settings."""
    base = {name: value for name, value in os.environ.items() if name not in _SECURITY_VARIABLES}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


# --- check --deploy and the refusals of the production switch ----------------------------


def test_check_deploy_finds_no_issue_under_the_production_settings():
    done = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("System check identified no issues")


def test_check_deploy_in_laptop_mode_names_what_the_production_switch_turns_on():
    done = manage("check", "--deploy", "--fail-level", "WARNING")

    assert done.returncode == 1
    assert re.findall(r"^\?: \(([\w.]+)\)", done.stderr, re.M) == [
        "security.W004",  # no HSTS
        "security.W008",  # no redirect to HTTPS
        "security.W009",  # the development SECRET_KEY
        "security.W012",  # session cookie not Secure
        "security.W016",  # CSRF cookie not Secure
    ]


NO_SECRET_KEY = ("llmserver: PRODUCTION=true needs a SECRET_KEY: set one of 50 or more random characters, "
                 "e.g. from python -c 'import secrets; print(secrets.token_urlsafe(50))'")


@pytest.mark.parametrize("env, line", [
    ({"SECRET_KEY": ""}, NO_SECRET_KEY),
    ({"SECRET_KEY": "llmserver-insecure-development-key-change-me"},
     "llmserver: PRODUCTION=true needs a SECRET_KEY of 50 or more random characters; it has 44 characters"),
    ({"SECRET_KEY": "ab" * 30},
     "llmserver: PRODUCTION=true needs a SECRET_KEY of 50 or more random characters; "
     "it has fewer than 5 different characters"),
    ({"SECRET_KEY": "django-insecure-" + "x1y2z3" * 8},
     "llmserver: PRODUCTION=true needs a SECRET_KEY of 50 or more random characters; "
     "it is a django-insecure- development key"),
    ({"DEBUG": "true"},
     "llmserver: PRODUCTION=true refuses DEBUG=true (it would show settings and tracebacks to visitors)"),
    ({"ALLOWED_HOSTS": ""},
     "llmserver: PRODUCTION=true needs ALLOWED_HOSTS: the host names this server answers to, "
     "e.g. ALLOWED_HOSTS=llm.example.com"),
    ({"REQUIRE_API_KEY": "false"},
     "llmserver: PRODUCTION=true refuses REQUIRE_API_KEY=false (anyone could use the models, unrecorded)"),
    ({"ENGINE_FAULT_INJECTION": "true"},
     "llmserver: PRODUCTION=true refuses ENGINE_FAULT_INJECTION=true (a signal would fail the engines' steps)"),
])
def test_production_refuses_to_start_without_what_it_needs(env, line):
    done = manage("check", **{**PRODUCTION, **env})

    assert done.returncode == 1
    assert done.stderr == line + "\n"


@pytest.mark.parametrize("name", ["REQUIRE_API_KEY", "DEBUG", "ENGINE_FAULT_INJECTION", "LOAD_MODELS_ON_START",
                                  "PRODUCTION"])
def test_an_on_off_setting_with_a_typo_stops_the_start_instead_of_reading_as_off(name):
    done = manage("check", **{name: "ture"})

    assert done.returncode == 1
    assert done.stderr == f"llmserver: {name} must be true or false, got 'ture'\n"


@pytest.mark.server_process
def test_a_production_server_without_a_secret_key_stops_with_that_line(tmp_path, live_db):
    server = start_server(tmp_path, wait=False, **{**PRODUCTION, "SECRET_KEY": ""})

    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines() == [NO_SECRET_KEY]


# --- a production server: HTTPS only, HSTS, secure cookies ------------------------------


# `production` (tests/conftest.py): the session's PRODUCTION=true server.


@pytest.fixture
def site(production):
    """A client of the production server as its proxy would pass plain HTTP on."""
    with httpx.Client(base_url=production.base_url, timeout=60, headers={"Host": HOST}) as client:
        yield client


HTTPS = {"X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("path", ["/", "/login/", "/admin/", "/v1/models", "/v1/chat/completions?x=1", "/metrics"])
def test_production_redirects_plain_http_to_https(site, path):
    response = site.get(path)

    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{HOST}{path}"
    assert "Strict-Transport-Security" not in response.headers  # only ever sent over HTTPS


def test_production_answers_health_over_plain_http_for_the_load_balancer(site, production):
    response = site.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert "Strict-Transport-Security" not in response.headers
    # A load balancer probing the address rather than the host name gets its answer too.
    assert httpx.get(f"{production.base_url}/health", timeout=10).status_code == 200


def test_production_sends_hsts_on_web_pages_and_api_paths_over_https(site, api_key):
    login = site.get("/login/", headers=HTTPS)
    models = site.get("/v1/models", headers={**HTTPS, **bearer(api_key)})

    assert (login.status_code, models.status_code) == (200, 200)
    assert login.headers["Strict-Transport-Security"] == HSTS
    assert models.headers["Strict-Transport-Security"] == HSTS
    assert models.json()["data"][0]["id"] == MODEL_ID


def test_production_cookies_are_secure_and_a_login_works_behind_the_proxy(site, live_db):
    user = make_user("prod")
    form = site.get("/login/", headers=HTTPS)
    csrf_cookie = form.headers["set-cookie"]
    assert csrf_cookie.startswith("csrftoken=") and "; secure" in csrf_cookie.lower()
    # Secure cookies: the client, talking plain HTTP to the server as the proxy does, would
    # not send them back by itself.
    csrf_token = form.cookies["csrftoken"]

    response = site.post("/login/", headers={
        **HTTPS, "Referer": f"https://{HOST}/login/", "Cookie": f"csrftoken={csrf_token}",
    }, data={"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": csrf_token})

    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/"
    session_cookie = next(value for value in response.headers.get_list("set-cookie") if value.startswith("sessionid="))
    assert "; secure" in session_cookie.lower() and "; httponly" in session_cookie.lower()
    page = site.get("/", headers={**HTTPS, "Cookie": f"sessionid={response.cookies['sessionid']}"})
    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"] == HSTS
    assert user.username in page.text


def test_production_refuses_a_host_it_does_not_serve_instead_of_redirecting_to_it(production):
    response = httpx.get(f"{production.base_url}/v1/models", headers={"Host": "evil.example.com"}, timeout=10)

    assert response.status_code == 400
    assert response.json() == {"error": {"message": "Bad request.", "type": "invalid_request_error",
                                         "param": None, "code": "bad_request"}}


@pytest.mark.server_process
def test_x_forwarded_proto_is_not_trusted_unless_told(tmp_path, live_db):
    server = start_server(tmp_path, **{**PRODUCTION, "TRUST_X_FORWARDED_PROTO": "false"})
    try:
        response = httpx.get(f"{server.base_url}/login/", headers={"Host": HOST, **HTTPS}, timeout=10)
    finally:
        server.stop()

    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{HOST}/login/"


# --- secrets: hashed in the database, never in the log ------------------------------------


@contextmanager
def admin_session(server, user):
    """A client logged in through the admin's own login form."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        client.get("/admin/login/")
        response = client.post("/admin/login/?next=/admin/", data={
            "username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/admin/"})
        assert response.status_code == 302 and response.headers["Location"] == "/admin/", response.text
        yield client


def _admin_add_key(client, name: str) -> str:
    client.get(f"{KEYS_URL}add/")
    response = client.post(f"{KEYS_URL}add/", data={
        "name": name, "owner": "", "expires_at_0": "", "expires_at_1": "", "max_concurrency": "",
        "allowed_models": "", "requests_per_minute": "", "tokens_per_minute": "", "token_budget": "",
        "budget_period": "month", "csrfmiddlewaretoken": client.cookies["csrftoken"],
    }, follow_redirects=True)
    assert response.status_code == 200
    return NEW_SECRET.findall(response.text)[0]


@pytest.fixture(scope="module")
def talkative(tmp_path_factory, live_db):
    """A server logging everything it can: DEBUG logging, and Django's DEBUG too."""
    server = start_server(tmp_path_factory.mktemp("talkative"), LOG_LEVEL="DEBUG", DEBUG="true")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def used_secrets(talkative, live_db) -> dict:
    """Secrets put through every path a secret takes, by how they were made or used."""
    from accounts.models import APIKey

    made = {}
    _, made["used"] = issue_key(name="security: used")
    with httpx.Client(base_url=talkative.base_url, timeout=60, headers=bearer(made["used"])) as api:
        assert chat(api, "Hello").json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"
        with api.stream("POST", "/v1/chat/completions", json={
                "model": MODEL_ID, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}) as stream:
            assert sse_events(stream)[-1] == "[DONE]"
        assert api.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 3}).status_code == 200

    made["wrong"] = "sk-" + secrets.token_urlsafe(32)
    wrong = httpx.get(f"{talkative.base_url}/v1/models", headers=bearer(made["wrong"]), timeout=30)
    assert wrong.status_code == 401
    made["wrong answer"] = wrong.json()["error"]["message"]

    revoked, made["revoked"] = issue_key(name="security: revoked")
    revoked.revoke()
    assert httpx.get(f"{talkative.base_url}/v1/models", headers=bearer(made["revoked"]), timeout=30).status_code == 401

    _, made["in the query"] = issue_key(name="security: in the query")
    in_query = httpx.get(f"{talkative.base_url}/v1/models?api_key={made['in the query']}",
                         headers={"X-Request-ID": "secret-in-query"}, timeout=30)
    assert in_query.status_code == 401

    staff = make_user("security-admin", is_staff=True, is_superuser=True)
    with admin_session(talkative, staff) as client:
        made["admin"] = _admin_add_key(client, "security: from the admin")
        made["admin key id"] = APIKey.objects.get(name="security: from the admin").pk

    done = subprocess.run([sys.executable, "manage.py", "createapikey", "--name", "security: from the command"],
                          cwd=ROOT, env=server_env(talkative.log_path.parent), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    made["command"] = done.stdout.splitlines()[-1]
    return made


SECRET_KINDS = ["used", "wrong", "revoked", "in the query", "admin", "command"]


@pytest.mark.server_process
def test_no_secret_nor_its_hash_reaches_the_log(used_secrets, talkative):
    from accounts.models import hash_secret

    log = talkative.log()
    assert " DEBUG asyncio " in log  # the server logged at DEBUG (asyncio's first line): nothing was held back
    for kind in SECRET_KINDS:
        secret = used_secrets[kind]
        assert secret not in log, kind
        assert secret[12:] not in log, kind  # nor the part after the visible prefix
        assert hash_secret(secret) not in log, kind


@pytest.mark.server_process
def test_a_key_in_the_query_string_is_logged_masked(used_secrets, talkative):
    line = next(line for line in talkative.log().splitlines() if "rid=secret-in-query" in line)

    assert "GET /v1/models?api_key=sk-*** 401 " in line


@pytest.mark.server_process
def test_a_wrong_key_is_answered_masked(used_secrets):
    wrong = used_secrets["wrong"]

    assert used_secrets["wrong answer"] == f"Incorrect API key provided: {wrong[:6]}***{wrong[-4:]}."


@pytest.mark.server_process
def test_the_database_holds_only_the_hash_of_each_secret(used_secrets):
    from django.contrib.admin.models import LogEntry
    from django.contrib.sessions.models import Session

    from accounts.models import APIKey, hash_secret

    for kind in ["used", "revoked", "in the query", "admin", "command"]:
        secret = used_secrets[kind]
        row = APIKey.objects.filter(hashed_secret=hash_secret(secret)).values().get()
        assert row["prefix"] == secret[:12]
        assert not [name for name, value in row.items() if secret in str(value)], kind
    admin_secret = used_secrets["admin"]
    entries = [str(vars(entry)) for entry in LogEntry.objects.filter(object_id=str(used_secrets["admin key id"]))]
    assert len(entries) == 1 and "security: from the admin" in entries[0]
    assert not [entry for entry in entries if admin_secret in entry or hash_secret(admin_secret) in entry]
    sessions = [str(session.get_decoded()) for session in Session.objects.all()]
    assert sessions and not [data for data in sessions if admin_secret in data]


# --- the admin: a staff login, and CSRF on every change -----------------------------------


def test_an_anonymous_visitor_of_the_admin_is_sent_to_its_login(server):
    response = httpx.get(f"{server.base_url}/admin/", timeout=30)

    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login/?next=/admin/"


def test_a_user_who_is_not_staff_cannot_get_into_the_admin(server, live_db):
    user = make_user("not-staff")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        client.get("/admin/login/")
        refused = client.post("/admin/login/", data={
            "username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]})
        assert refused.status_code == 200
        assert "Please enter the correct username and password for a staff account." in refused.text

    # Logged in on the chat page, the same user is still sent to the admin's login.
    with log_in(server, user.username) as client:
        assert client.get("/").status_code == 200
        response = client.get(KEYS_URL)
        assert response.status_code == 302
        assert response.headers["Location"] == f"/admin/login/?next={KEYS_URL}"


def test_the_admin_login_without_the_csrf_token_is_403(server, live_db):
    staff = make_user("staff", is_staff=True, is_superuser=True)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        client.get("/admin/login/")
        response = client.post("/admin/login/", data={"username": staff.username, "password": PASSWORD})

        assert response.status_code == 403
        assert "CSRF verification failed" in response.text
        assert "sessionid" not in client.cookies


def test_a_staff_action_or_change_in_the_admin_needs_the_csrf_token(server, live_db):
    from accounts.models import APIKey

    staff = make_user("staff", is_staff=True, is_superuser=True)
    key, _ = issue_key(name="csrf: before")
    action = {"action": "revoke_keys", "_selected_action": [key.pk], "index": "0"}
    change = {"name": "csrf: after", "owner": "", "is_active": "on", "expires_at_0": "", "expires_at_1": "",
              "max_concurrency": "", "allowed_models": "", "requests_per_minute": "", "tokens_per_minute": "",
              "token_budget": "", "budget_period": "month"}
    with admin_session(server, staff) as client:
        assert client.post(f"{KEYS_URL}{key.pk}/change/", data=change).status_code == 403
        assert client.post(KEYS_URL, data=action).status_code == 403
        key.refresh_from_db()
        assert (key.name, key.is_active) == ("csrf: before", True)

        token = {"csrfmiddlewaretoken": client.cookies["csrftoken"]}
        assert client.post(f"{KEYS_URL}{key.pk}/change/", data={**change, **token}).status_code == 302
        assert client.post(KEYS_URL, data={**action, **token}).status_code == 302
        key.refresh_from_db()
        assert (key.name, key.is_active) == ("csrf: after", False)
        assert APIKey.objects.get(pk=key.pk).revoked_at is not None


# --- the chat socket: only a live session of an active user --------------------------------


def test_a_forged_session_cookie_opens_no_socket(server):
    with pytest.raises(InvalidStatus) as refused:
        chat_socket(server, cookies={"sessionid": secrets.token_hex(16)})
    assert refused.value.response.status_code == 403


def test_the_session_of_a_deactivated_user_opens_no_socket(server, live_db):
    user = make_user("deactivated")
    with log_in(server, user.username) as client:
        with chat_socket(server, client):
            pass  # the same session opened one a moment ago
        user.is_active = False
        user.save(update_fields=["is_active"])

        with pytest.raises(InvalidStatus) as refused:
            chat_socket(server, client)
    assert refused.value.response.status_code == 403


def test_a_session_from_before_a_password_change_opens_no_socket(server, live_db):
    user = make_user("password-changed")
    with log_in(server, user.username) as client:
        with chat_socket(server, client):
            pass
        user.set_password("another horse battery staple")
        user.save(update_fields=["password"])

        with pytest.raises(InvalidStatus) as refused:
            chat_socket(server, client)
    assert refused.value.response.status_code == 403


# --- security headers, laptop mode --------------------------------------------------------


@pytest.fixture(scope="module")
def staff_client(server, live_db):
    with admin_session(server, make_user("headers", is_staff=True, is_superuser=True)) as client:
        yield client


# Logged in, both login pages send the user on (302).
@pytest.mark.parametrize("path, status, csp", [
    ("/", 200, CSP), ("/login/", 302, CSP), ("/admin/", 200, None), ("/admin/login/", 302, None), (KEYS_URL, 200, None),
])
def test_web_pages_carry_the_security_headers(staff_client, path, status, csp):
    response = staff_client.get(path)

    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response.headers.get("Content-Security-Policy") == csp
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP on a laptop


def test_the_anonymous_login_page_carries_its_content_security_policy(server):
    response = httpx.get(f"{server.base_url}/login/", timeout=30)

    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/models", 200), ("GET", "/health", 200), ("POST", "/tokenize", 400), ("GET", "/v1/nope", 404),
])
def test_api_paths_carry_the_security_headers(api, method, path, status):
    response = api.request(method, path, json={} if method == "POST" else None)

    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in response.headers
