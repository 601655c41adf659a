"""Guessing API keys and passwords is refused after a few tries, and logged at WARNING.

- Wrong API keys, per client address (in-process, each request with its client's
  address, the counter's clock injected): past the limit a wrong key gets 429 with
  Retry-After; a valid key is still served, from that address and from any other behind
  the same proxy. Two servers sharing Redis count together (two processes).
- Failed logins, per username and per address, on the chat page's and the admin's login
  forms (in-process, with the counters' clock injected; and the refusal as a person sees
  it, in a browser).
- The counter itself, with an injected clock.
"""

from __future__ import annotations

import logging
import os
import re
import secrets

import httpx
import pytest
from django.core.cache import caches
from django.test import Client
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from accounts import auth, logins
from accounts.throttle import FailureCounter
from tests.asgi import InProcessAPI
from tests.conftest import PASSWORD, bearer, issue_key, make_user, start_server

LIMIT = 3

# --- the counter -----------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_counter_counts_failures_in_a_window_that_starts_at_the_first():
    clock = Clock()
    counter = FailureCounter(f"test-{secrets.token_hex(4)}", lambda: 60.0, clock=clock)

    assert counter.current("a") == (0, 0.0)
    assert counter.add("a") == (1, 60.0)
    clock.now += 10
    assert counter.add("a") == (2, 50.0)
    assert counter.add("b") == (1, 60.0)
    clock.now += 20
    assert counter.current("a") == (2, 30.0)
    clock.now += 30  # the window of "a" is over
    assert counter.current("a") == (0, 0.0)
    assert counter.add("a") == (1, 60.0)
    counter.clear("a")
    assert counter.current("a") == (0, 0.0)


# --- wrong API keys ----------------------------------------------------------------------
# In-process: the API's ASGI chain, handed each request with the client address Daphne
# gives it (behind the trusted proxy, TRUST_X_FORWARDED_FOR, the first address of
# X-Forwarded-For: tests/test_cluster.py checks that part on a real server).


class FromAddress(InProcessAPI):
    """The API in-process, each request from the client at ``address``."""

    def __init__(self, address: str):
        super().__init__()
        application = self.application

        async def from_address(scope, receive, send):
            await application({**scope, "client": (address, 40000)}, receive, send)

        self.application = from_address


@pytest.fixture
def keys_clock(monkeypatch, settings, live_db):
    """API_KEY_FAILURES_PER_MINUTE=LIMIT (read at each wrong key), the wrong keys'
    counter on an injected clock, in a cache of this test's own (whatever REDIS_URL says)."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "test-guessing-keys"}}
    settings.API_KEY_FAILURES_PER_MINUTE = LIMIT
    caches["default"].clear()
    now = Clock()
    monkeypatch.setattr(auth.wrong_keys, "clock", now)
    yield now
    caches["default"].clear()


@pytest.fixture(scope="module")
def valid_key(live_db) -> str:
    return issue_key(name="guessing: valid")[1]


class Answer:
    def __init__(self, status: int, headers: dict[str, str], payload):
        self.status_code, self.headers, self.payload = status, headers, payload

    def json(self):
        return self.payload


async def models_from(address: str, secret: str) -> Answer:
    """GET /v1/models as the client at ``address``."""
    response = await FromAddress(address).get("/v1/models", bearer(secret))
    return Answer(response.status, response.headers, await response.json())


def wrong_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def new_address() -> str:
    """A client address of its own for each test (with REDIS_URL the counts outlive the
    servers, for a minute)."""
    return "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))


async def throttle(address: str) -> Answer:
    """LIMIT wrong keys from ``address`` (each 401), then one more: its answer."""
    for _ in range(LIMIT):
        refused = await models_from(address, wrong_key())
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
    return await models_from(address, wrong_key())


async def test_past_the_limit_a_wrong_key_from_that_address_gets_429_with_retry_after(keys_clock):
    address = new_address()
    refused = await throttle(address)

    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    assert 50 <= retry_after <= 60  # the minute since the first wrong key, just begun
    assert refused.json() == {"error": {
        "message": f"Too many requests with an invalid API key from your address (at most {LIMIT} a minute); "
                   f"retry after {retry_after} seconds.",
        "type": "rate_limit_error", "param": None, "code": "too_many_authentication_failures"}}
    assert (await models_from(address, wrong_key())).status_code == 429


async def test_a_valid_key_is_still_served_from_an_address_refused_for_wrong_keys(keys_clock, valid_key):
    address = new_address()
    assert (await throttle(address)).status_code == 429

    assert (await models_from(address, valid_key)).status_code == 200


async def test_behind_the_trusted_proxy_one_clients_wrong_keys_do_not_refuse_another(keys_clock, valid_key):
    assert (await throttle(new_address())).status_code == 429

    another = new_address()
    assert (await models_from(another, valid_key)).status_code == 200
    refused = await models_from(another, wrong_key())
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")


async def test_wrong_keys_are_logged_at_warning_with_the_address_and_never_the_key(keys_clock, caplog):
    caplog.set_level(logging.INFO)
    address = new_address()
    secrets_sent = [wrong_key() for _ in range(LIMIT + 2)]
    answers = [await models_from(address, secret) for secret in secrets_sent]
    retry_after = answers[LIMIT].headers["retry-after"]

    lines = [record.getMessage() for record in caplog.records
             if record.name == "llmserver.auth" and record.levelno == logging.WARNING
             and re.search(rf"from {re.escape(address)}\b", record.getMessage())]
    assert lines == [f"invalid API key from {address} ({n} of {LIMIT} allowed a minute)" for n in (1, 2, 3)] + [
        f"invalid API keys from {address}: more than {LIMIT} within a minute; refusing them with 429 for "
        f"{retry_after} s"]
    log = caplog.text
    assert not [secret for secret in secrets_sent if secret[6:] in log]


# Two processes: the count each keeps in Redis is the other's too.


def sharing_models_from(server, address: str, secret: str) -> httpx.Response:
    """GET /v1/models as the client at ``address`` behind the proxy."""
    return httpx.get(f"{server.base_url}/v1/models", headers={**bearer(secret), "X-Forwarded-For": address},
                     timeout=30)


# The servers' own limits: LIMIT wrong keys a minute behind a trusted proxy, and two failed
# logins a username (the browser test's).
GUARDED = {"TRUST_X_FORWARDED_FOR": "true", "API_KEY_FAILURES_PER_MINUTE": LIMIT, "LOGIN_FAILURES_PER_USERNAME": 2}


@pytest.fixture(scope="module")
def redis_answer() -> tuple[str, Exception | None]:
    """REDIS_URL (else a local Redis), and why it does not answer (None if it does)."""
    import redis

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_timeout=3).ping()
    except redis.RedisError as error:
        return url, error
    return url, None


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, live_db, redis_answer):
    """A server with the GUARDED limits, counting in Redis when Redis answers (it is then
    the first of ``sharing`` too)."""
    url, error = redis_answer
    live = start_server(tmp_path_factory.mktemp("guessing"), **GUARDED, **({} if error else {"REDIS_URL": url}))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def sharing(request, tmp_path_factory, redis_answer):
    """Two servers sharing the counts through Redis (REDIS_URL, else a local Redis)."""
    url, error = redis_answer
    if error is not None:
        pytest.skip(f"Redis does not answer at {url}: {error}")
    first = request.getfixturevalue("guarded")
    second = start_server(tmp_path_factory.mktemp("sharing"), REDIS_URL=url, **GUARDED)
    yield [first, second]
    second.stop()


@pytest.mark.server_process
def test_with_redis_the_servers_count_an_addresss_wrong_keys_together(sharing):
    first, second = sharing
    address = new_address()
    for server in (first, second, first):
        assert sharing_models_from(server, address, wrong_key()).status_code == 401

    assert sharing_models_from(second, address, wrong_key()).status_code == 429


# --- failed logins -----------------------------------------------------------------------

INVALID_LOGIN = "Please enter a correct username and password. Note that both fields may be case-sensitive."
LOCKED = "Too many failed attempts to log in. Try again in 15 minutes."


@pytest.fixture
def clock(monkeypatch, settings, live_db):
    """The login counters on an injected clock, starting empty (a cache of this test's
    own, whatever REDIS_URL says), with small limits (and a fast password hasher: these
    tests check passwords by the dozen)."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "test-guessing"}}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    settings.LOGIN_FAILURES_PER_ADDRESS = 5
    settings.LOGIN_FAILURES_WINDOW_MINUTES = 15
    caches["default"].clear()
    now = Clock()
    for counter in (logins.by_username, logins.by_address):
        monkeypatch.setattr(counter, "clock", now)
    yield now
    caches["default"].clear()


def log_in(client: Client, path: str, username: str, password: str):
    return client.post(path, {"username": username, "password": password})


def form_errors(response) -> list[str]:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect or a 500
    return list(response.context["form"].non_field_errors())


def warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "llmserver.logins" and record.levelno == logging.WARNING]


def test_a_username_is_refused_after_its_failures_even_with_the_right_password(clock, caplog):
    caplog.set_level(logging.WARNING, logger="llmserver.logins")
    user = make_user("guessed")
    client = Client(REMOTE_ADDR="198.51.100.1")
    for _ in range(3):
        assert form_errors(log_in(client, "/login/", user.username, "wrong")) == [INVALID_LOGIN]

    assert form_errors(log_in(client, "/login/", user.username, PASSWORD)) == [LOCKED]
    assert "_auth_user_id" not in client.session
    assert warnings(caplog) == [
        f"failed login for '{user.username}' from 198.51.100.1 ({n} of 3 allowed for the username, {n} of 5 for "
        f"the address, within 15 minutes)" for n in (1, 2, 3)] + [
        f"login refused for '{user.username}' from 198.51.100.1: too many failed attempts (for 900 s more)"]


def test_a_refused_username_may_log_in_again_once_its_window_is_over(clock):
    user = make_user("waited")
    client = Client(REMOTE_ADDR="198.51.100.1")
    for _ in range(3):
        log_in(client, "/login/", user.username, "wrong")
    clock.now += 14 * 60
    assert form_errors(log_in(client, "/login/", user.username, PASSWORD)) == [
        "Too many failed attempts to log in. Try again in 1 minute."]

    clock.now += 60
    assert log_in(client, "/login/", user.username, PASSWORD).status_code == 302


def test_the_admin_login_refuses_a_username_refused_on_the_chat_login(clock):
    staff = make_user("guessed-staff", is_staff=True)
    client = Client(REMOTE_ADDR="198.51.100.1")
    for _ in range(3):
        log_in(client, "/login/", staff.username, "wrong")

    assert form_errors(log_in(client, "/admin/login/", staff.username, PASSWORD)) == [LOCKED]


def test_an_address_is_refused_after_failures_for_several_usernames(clock):
    user = make_user("sprayed")
    sprayer = Client(REMOTE_ADDR="198.51.100.2")
    for n in range(5):
        assert form_errors(log_in(sprayer, "/login/", f"nobody-{n}", "wrong")) == [INVALID_LOGIN]

    assert form_errors(log_in(sprayer, "/login/", user.username, PASSWORD)) == [LOCKED]
    assert log_in(Client(REMOTE_ADDR="198.51.100.3"), "/login/", user.username, PASSWORD).status_code == 302


def test_a_successful_login_clears_its_usernames_failures(clock):
    user = make_user("typo")
    for _ in range(2):
        client = Client(REMOTE_ADDR="198.51.100.4")
        for _ in range(2):
            log_in(client, "/login/", user.username, "wrong")
        assert log_in(client, "/login/", user.username, PASSWORD).status_code == 302


def test_a_username_is_counted_whatever_its_case(clock):
    user = make_user("cased")
    client = Client(REMOTE_ADDR="198.51.100.5")
    for username in (user.username.upper(), user.username.title(), user.username.upper()):
        log_in(client, "/login/", username, "wrong")

    assert form_errors(log_in(client, "/login/", user.username, PASSWORD)) == [LOCKED]
    assert re.fullmatch(r"cased-[0-9a-f]{8}", user.username)


@pytest.mark.browser
@pytest.mark.server_process
def test_the_login_page_tells_a_refused_user_when_to_try_again(browser, guarded, live_db):
    """Two wrong passwords (the server's limit), then the right one: refused, and told."""
    user = make_user("browser-guessed")
    browser.delete_all_cookies()
    for password in ("wrong", "wrong again", PASSWORD):
        browser.get(f"{guarded.base_url}/login/")
        browser.execute_script("window.beforeSubmit = true")  # gone once the answer's page loads
        browser.find_element(By.NAME, "username").send_keys(user.username)
        browser.find_element(By.NAME, "password").send_keys(password, Keys.ENTER)
        # (Not staleness_of the form: this Chromium sometimes answers a check of a node of
        # the old page with a plain WebDriverException, which staleness_of does not expect.)
        WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(lambda b: b.execute_script(
            "return window.beforeSubmit === undefined && document.readyState === 'complete'"))
        error = WebDriverWait(browser, 30).until(lambda b: b.find_element(By.CSS_SELECTOR, ".form-error"))

    assert error.text == LOCKED
    assert browser.current_url == f"{guarded.base_url}/login/"
    assert "sessionid" not in {cookie["name"] for cookie in browser.get_cookies()}
