"""Fixtures: a real llmserver (Daphne, real engine, demo model) in a subprocess, spoken
to over HTTP; and, for the few tests that must look inside, the engine in-process.

Server processes use pytest-django's test database (a SQLite file, or PostgreSQL's
test_<name> when DATABASE_URL points there), so tests create keys and read usage records
with the ORM while the servers write them. Nothing is flushed between tests: tests find
their own rows by request id or key."""

from __future__ import annotations

import functools
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "demo"
MODEL_ID = "llmserver-demo"


def _redis_of_this_worker() -> None:
    """Under pytest-xdist, each worker's Redis is a database of its own (its number + 1), in
    this process and in the servers it starts: throttle counts and channel groups of tests
    running at the same time never meet. The settings are already loaded; Django creates
    the cache and the channel layer at first use, after this."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("REDIS_URL", "")
    if not (worker.startswith("gw") and url):
        return
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings

    url = urlunsplit(urlsplit(url)._replace(path=f"/{int(worker[2:]) + 1}"))
    os.environ["REDIS_URL"] = settings.REDIS_URL = url
    settings.CACHES["default"]["LOCATION"] = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = url


_redis_of_this_worker()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()

    def engine(self) -> dict:
        return self.health()["models"][0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_database_url() -> str:
    """The URL of the database pytest-django set up, for server processes."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def server_env(tmp_path: Path, **overrides) -> dict:
    env = {
        **os.environ,
        "MODEL_PATH": str(DEMO_MODEL),
        "MODEL_ID": MODEL_ID,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": test_database_url(),
        # LiveServer.stop() waits 10 s for the exit: a drain must end well within it.
        "SHUTDOWN_GRACE_SECONDS": "5",
        # The suite sends wrong keys and passwords on purpose, all from one address, to
        # servers shared by many tests; tests/test_guessing.py sets the limits it tests.
        "API_KEY_FAILURES_PER_MINUTE": "100000",
        "LOGIN_FAILURES_PER_USERNAME": "100000",
        "LOGIN_FAILURES_PER_ADDRESS": "100000",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


_collected_static: dict = {}


def collected_static_root() -> Path:
    """A STATIC_ROOT that ``manage.py collectstatic`` filled under the production
    settings, once per test session (a PRODUCTION=true server refuses to start without)."""
    if "root" not in _collected_static:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="llmserver-static-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        collect_static(root)
        _collected_static["root"] = root
    return _collected_static["root"]


def collect_static(root: Path) -> None:
    """``manage.py collectstatic`` into ``root`` with PRODUCTION=true's storage."""
    import secrets

    env = {**os.environ, "PRODUCTION": "true", "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "false",
           "ALLOWED_HOSTS": "localhost", "STATIC_ROOT": str(root)}
    done = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def start_server(tmp_path: Path, *, wait: bool = True, **overrides) -> LiveServer:
    """Start ``manage.py serve`` (Daphne + the engine) on a free port; wait for /health.
    A PRODUCTION=true server gets the session's collected static files unless told a
    STATIC_ROOT."""
    if str(overrides.get("PRODUCTION", "")).lower() == "true" and "STATIC_ROOT" not in overrides:
        overrides["STATIC_ROOT"] = collected_static_root()
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    env = server_env(tmp_path, **overrides)
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    if not wait:
        return server
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            # Its own log says it listens: a port picked free can be taken meanwhile by
            # another process (another suite on this machine), whose /health would answer.
            if (f"listening on 127.0.0.1:{port}" in server.log()
                    and httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_modify_db_settings, django_db_blocker):
    """The test database, created once for the session. (pytest-django would create it
    only for tests marked django_db, and those run inside transactions the server
    processes cannot see.) Under pytest-xdist each worker has its own: PostgreSQL's name
    gets the worker's suffix (django_db_modify_db_settings), SQLite's has the pid."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
        from django.db import connection

        name = connection.settings_dict["NAME"]
    yield
    with django_db_blocker.unblock():
        _close_other_sessions()
        teardown_databases(config, verbosity=0)
    for suffix in ("-wal", "-shm"):  # SQLite's WAL files outlive the database Django deletes
        Path(f"{name}{suffix}").unlink(missing_ok=True)


def _close_other_sessions() -> None:
    """PostgreSQL refuses to drop a database others are connected to: the connections
    that in-process tests opened in asgiref's worker threads are still there."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def empty_database(db):
    """An empty database as this test sees it: the rows that other tests committed (keys,
    usage, leases, users) are deleted inside this test's transaction, which pytest-django
    rolls back at its end. For tests of views over everything (the admin's lists, the
    dashboard), whatever ran before them. The settlements this process's accounting
    thread still holds are written first, so that none of them lands during the test."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session

    from accounts.books import books
    from accounts.models import APIKey, Lease, LimitScope, UsageCounter, UsageRecord

    assert books.flush()
    for model in (UsageRecord, Lease, UsageCounter, LimitScope, APIKey, Session, get_user_model()):
        model.objects.all().delete()


@pytest.fixture(scope="session")
def live_db(django_db_setup, django_db_blocker):
    """Database access for the whole session, without per-test transactions or flushes:
    rows must be committed for the server processes to see them."""
    with django_db_blocker.unblock():
        yield
        from accounts.books import books

        books.flush()  # the last in-process requests' settlements, while the database is open


def issue_key(**fields) -> tuple:
    from accounts.models import APIKey

    return APIKey.issue(name=fields.pop("name", "tests"), **fields)


@pytest.fixture(scope="session")
def api_key(live_db) -> str:
    """The secret of a key without limits, shared by the tests that only need to be in."""
    return issue_key(name="suite")[1]


@contextmanager
def serving(specs: list, *, default: str | None = None, max_loaded: int | None = None,
            step_delay: float = 0.0) -> Iterator[dict]:
    """``specs`` (inference.registry.ModelSpec) as the whole catalogue of this process's
    registry for the time of the block, for tests that drive the API in-process
    (tests/asgi.py); the default model and those marked ``preload`` loaded: {id: worker} of the
    loaded ones. On exit they are unloaded and the registry's previous catalogue and
    settings are put back, so that a test or module that follows finds it as it was;
    the usage of the requests they served is written."""
    from inference.registry import registry

    before = dict(specs=registry.specs(), default=registry.default, max_loaded=registry.max_loaded,
                  keep_alive=registry.keep_alive, step_delay=registry.step_delay)
    registry.configure(specs, default=default, max_loaded=max_loaded or len(specs), step_delay=step_delay)
    try:
        registry.preload()
        yield {slot.spec.id: slot.worker for slot in registry.slots() if slot.worker is not None}
    finally:
        registry.stop_all()
        registry.configure(**before)
        # The usage of the requests served is written now, while the tests' database
        # access lasts (the accounting thread writes on its own schedule otherwise).
        from accounts.books import books

        books.flush()


@contextmanager
def model_in_process(step_delay: float = 0.0):
    """The demo model (batch of 4) served in-process for the time of the block (a
    fixture's), as :func:`serving` does: yields its worker."""
    from inference.registry import ModelSpec

    with serving([ModelSpec(MODEL_ID, str(DEMO_MODEL), max_batch_size=4)], default=MODEL_ID,
                 step_delay=step_delay) as workers:
        yield workers[MODEL_ID]


@pytest.fixture
def in_process_model(live_db):
    """The demo model served in-process at 5 ms a step, so that generations are in flight
    long enough for a test to act while they run."""
    with model_in_process(0.005) as worker:
        yield worker


@pytest.fixture(scope="module")
def slow_api(live_db):
    """The demo model served in this process at 5 ms a step, for a module; the API's ASGI
    chain (tests/asgi.py) to reach it."""
    from tests.asgi import InProcessAPI

    with model_in_process(0.005):
        yield InProcessAPI()


def orm(fn, *args, **kwargs):
    """``fn`` (ORM work) off the event loop, in asgiref's sync thread: awaitable."""
    from asgiref.sync import sync_to_async

    return sync_to_async(fn)(*args, **kwargs)


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="session")
def server(tmp_path_factory, live_db):
    """One llmserver shared by the tests that only talk to it."""
    live = start_server(tmp_path_factory.mktemp("server"), CORS_ORIGINS="https://app.example.com")
    yield live
    live.stop()


# A PRODUCTION=true server's settings, as behind its TLS-terminating proxy.
PRODUCTION_HOST = "llm.example.com"
PRODUCTION = {
    "PRODUCTION": "true",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": PRODUCTION_HOST,
    "TRUST_X_FORWARDED_PROTO": "true",
}


@pytest.fixture(scope="session")
def production(tmp_path_factory, live_db):
    """One PRODUCTION=true server shared by the tests that only talk to it (its settings
    are decided when the process starts)."""
    live = start_server(tmp_path_factory.mktemp("production"), **PRODUCTION)
    yield live
    live.stop()


@pytest.fixture
def api(server, api_key):
    with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(api_key)) as client:
        yield client


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's tokenizer, to count tokens independently of the server."""
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(DEMO_MODEL)))


async def wait_until(predicate, timeout: float = 30.0):
    """:func:`wait_for` for tests on the event loop: ``predicate`` may return an awaitable
    (an ORM query's ``afirst()``...), and the loop runs the application meanwhile."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not reached in {timeout:.0f}s")


async def engine_state(api) -> dict:
    """The in-process engine's entry of ``/health`` (``api``: a tests/asgi.py InProcessAPI),
    as :meth:`LiveServer.engine` reads a server's."""
    return (await (await api.get("/health")).json())["models"][0]


def wait_for(predicate, timeout: float = 30.0):
    """Poll ``predicate`` until it returns something true; return that, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not reached in {timeout:.0f}s")


def chat(api: httpx.Client, content: str, **params) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **params}
    return api.post("/v1/chat/completions", json=body)


def sse_data(lines) -> list:
    """The data payloads of SSE ``lines``, in order ("[DONE]" kept as the string)."""
    import json

    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def sse_events(response: httpx.Response) -> list:
    """The data payloads of a streamed HTTP response (see :func:`sse_data`)."""
    return sse_data(response.iter_lines())


def sse_body(body: bytes) -> list:
    """The data payloads of a whole SSE body (see :func:`sse_data`)."""
    return sse_data(body.decode().splitlines())


def server_record_for(request_id: str, timeout: float = 10.0):
    """The first usage record of a request a server process answered, once it has written
    it (within its USAGE_WRITE_DELAY_MS of the response closing). In-process tests call
    ``accounts.books.books.flush()`` instead (tests/test_usage_records.py); a test that
    must know there is exactly one asks again once the process has written everything
    (test_crash: after the process is gone)."""
    from accounts.models import UsageRecord

    return wait_for(lambda: UsageRecord.objects.filter(request_id=request_id).first(), timeout)


class HeldStream:
    """A long streaming chat completion sent to a server process, held open after its
    first chunk; ``leave()`` disconnects."""

    def __init__(self, base_url: str, secret: str):
        from demomodel.corpus import count_prompt

        self.client = httpx.Client(base_url=base_url, timeout=60, headers=bearer(secret))
        self.context = self.client.stream("POST", "/v1/chat/completions", json={
            "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True})
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        assert next(self.lines).startswith("data: ")

    def leave(self) -> None:
        self.context.__exit__(None, None, None)
        self.client.close()


# --- the chat page: users, sessions, sockets -------------------------------------------

PASSWORD = "correct horse battery staple"


@functools.cache
def _password_hash(hasher: str) -> str:
    """:data:`PASSWORD` hashed once per process and hasher (the default one's full work is
    0.2 s of CPU here) for every user :func:`make_user` makes; logging in still checks it."""
    from django.contrib.auth.hashers import make_password

    return make_password(PASSWORD, hasher=hasher)


def make_user(prefix: str = "user", **fields):
    """A new user (unique name) with :data:`PASSWORD`."""
    import uuid

    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import get_hasher

    user = get_user_model()(username=f"{prefix}-{uuid.uuid4().hex[:8]}", password=_password_hash(get_hasher().algorithm), **fields)
    user.save()
    return user


@contextmanager
def log_in(server: LiveServer, username: str, password: str = PASSWORD):
    """An HTTP client logged in through the login form, as a browser would be."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        client.get("/login/")
        response = client.post("/login/", data={
            "username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"],
        }, headers={"Referer": f"{server.base_url}/login/"})
        assert response.status_code == 302, response.text
        yield client


def chat_socket(server: LiveServer, client: httpx.Client | None = None, *, origin: str | None = "same",
                cookies: dict | None = None):
    """A WebSocket to the chat consumer, with the session of ``client`` (or ``cookies``)
    and an Origin header (the server's own by default; None: none)."""
    from websockets.sync.client import connect

    cookies = dict(client.cookies) if client is not None else (cookies or {})
    headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())} if cookies else {}
    url = server.base_url.replace("http://", "ws://") + "/ws/chat"
    return connect(url, origin=server.base_url if origin == "same" else origin, additional_headers=headers,
                   open_timeout=10, close_timeout=5)


# --- a real browser -------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven through its ChromeDriver (Selenium is given both
    paths, so it never downloads a browser or a driver). Skipped where they are not
    installed, except in CI (.ci/run), which installs them and fails without them."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver"
        if os.environ.get("LLMSERVER_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    driver = start_browser()
    yield driver
    driver.quit()


# What Chromium says of a script or an element read that began on a page the browser has
# since redrawn or left: nothing is wrong but the moment, so the read is made again.
_READ_ACROSS_A_PAGE_CHANGE = ("does not belong to the document", "Execution context was destroyed",
                              "Cannot find context with specified id", "inspected target navigated or closed")


def until(browser, predicate, timeout: float = 30):
    """Poll ``predicate`` (which reads ``browser``) until it returns something true;
    return that, or fail with the last read's error. An element not there yet is looked
    for again, and a read made as the page redraws or navigates is made again (Selenium's
    stale element, or Chromium's JavaScript error for it); any other error is the test's."""
    from selenium.common.exceptions import JavascriptException, NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            if value := predicate():
                return value
        except (NoSuchElementException, StaleElementReferenceException) as exc:
            last = exc
        except JavascriptException as exc:
            if not any(words in str(exc.msg) for words in _READ_ACROSS_A_PAGE_CHANGE):
                raise
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout:.0f}s") from last
        time.sleep(0.02)


def start_browser():
    """A new headless Chromium (its own profile: cookies and storage of its own)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for tests to read
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    return driver


# The chat page in a browser (tests/test_chat_page*.py).


@pytest.fixture(scope="module")
def site(tmp_path_factory, live_db):
    """A server whose engine takes 20 ms a step: a long answer lasts seconds, long enough
    for a person (or a test) to press Stop."""
    server = start_server(tmp_path_factory.mktemp("chat-page"), ENGINE_STEP_DELAY_MS=20)
    yield server
    server.stop()


@pytest.fixture
def page(browser, site):
    """The browser, logged out, at its usual size."""
    browser.delete_all_cookies()
    browser.set_window_size(1280, 900)
    browser.get_log("browser")  # drop what earlier tests left in the console
    return browser
