"""Many models from one MODELS_CONFIG: listed whether loaded or not, loaded on first
request (one load shared by the requests that wait for it), the least recently used idle
one unloaded past MAX_LOADED_MODELS and never one with requests in flight, aliases, a
broken model answering 503 alone, load/unload for admin keys only, and keep-alive.

In-process: the MODELS_CONFIG file is read as the server reads it at start
(``configure_registry``, with the settings of that server) into this process's registry, and the API is driven through
its ASGI chain (tests/asgi.py), the admin's Models page through Django's test client.
Each test gets the catalogue afresh, with no model loaded. A mistaken MODELS_CONFIG
stopping the server at start is the process's own behaviour: that test starts one."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from contextlib import contextmanager

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, override_settings

from accounts.books import books
from demomodel.corpus import count_answer, count_prompt, repeat_prompt
from inference.registry import configure_registry, registry
from llmserver import clock
from tests.asgi import InProcessAPI
from tests.conftest import DEMO_MODEL, ROOT, bearer, issue_key, make_user, start_server

TINY_MODEL = ROOT / "models" / "tiny"


def models_config(folder, broken_path) -> str:
    path = folder / "models.toml"
    path.write_text(f"""
default = "demo-a"

[[models]]
id = "demo-a"
path = "{DEMO_MODEL}"
aliases = ["gpt-3.5-turbo", "demo"]

[[models]]
id = "demo-b"
path = "{DEMO_MODEL}"
max_batch_size = 4

[[models]]
id = "tiny"
path = "{TINY_MODEL}"

[[models]]
id = "broken"
path = "{broken_path}"
""")
    return str(path)


@pytest.fixture(scope="module")
def broken_path(tmp_path_factory):
    return tmp_path_factory.mktemp("broken") / "model"  # not there (yet)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, broken_path) -> str:
    return models_config(tmp_path_factory.mktemp("registry"), broken_path)


@contextmanager
def configured(config_file: str, **environment):
    """This process's registry as a server started with MODELS_CONFIG=config_file and
    ``environment`` configures it (the settings are read once, here); afterwards the
    settlements of its requests are written, its models unloaded, its keep-alive task
    ended, and the registry as it was before."""
    before = dict(vars(registry))
    with override_settings(MODELS_CONFIG=config_file, **environment):
        configure_registry()
    try:
        yield
    finally:
        if registry._reaper is not None:
            registry._reaper.cancel()
        assert books.flush()
        registry.stop_all()
        vars(registry).clear()
        vars(registry).update(before)


@pytest.fixture
def catalogue(config_file, live_db):
    """MAX_LOADED_MODELS=2, ENGINE_STEP_DELAY_MS=20; no model loaded."""
    with configured(config_file, MAX_LOADED_MODELS=2, ENGINE_STEP_DELAY_MS=20):
        yield


@pytest.fixture(scope="module")
def admin_key(live_db):
    return issue_key(name="registry-admin", is_admin=True)[1]


@pytest.fixture(scope="module")
def user_key(live_db):
    return issue_key(name="registry-user")[1]


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


class Client:
    """The API in-process, with a key (or none)."""

    def __init__(self, key: str | None = None):
        self._api = InProcessAPI()
        self._headers = bearer(key) if key else {}

    async def request(self, method: str, path: str, body: dict | None = None,
                      headers: dict[str, str] | None = None) -> Answer:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {**self._headers, **(headers or {}), "content-length": str(len(data))}
        if body is not None:
            headers["content-type"] = "application/json"
        response = await self._api.request(method, path, data, headers)
        return Answer(response.status, response.headers, await response.body())

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return await self.request("GET", path, headers=headers)

    async def post(self, path: str, body: dict | None = None, headers: dict[str, str] | None = None) -> Answer:
        return await self.request("POST", path, body, headers)


@pytest.fixture
def api(catalogue, user_key):
    return Client(user_key)


@pytest.fixture
def admin(catalogue, admin_key):
    """A client with the admin key."""
    return Client(admin_key)


async def loaded(admin) -> dict[str, dict]:
    return {model["id"]: model for model in (await admin.get("/v1/models/loaded")).json()["data"]}


async def ask(api, model: str, content: str = repeat_prompt("tiger lemon"), **fields) -> Answer:
    return await api.post("/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": content}], **fields})


async def until(predicate, timeout: float = 30.0):
    """Await ``predicate()`` until it returns something true; return that, or fail."""
    async with asyncio.timeout(timeout):
        while not (value := await predicate()):
            await asyncio.sleep(0.02)
    return value


# A count the demo model answers exactly (it stops reliably up to 41), 20 ms a step: ~0.8 s in flight.
STREAM_COUNT = 40


class Stream:
    """A streamed request held open, read in a task of its own until :meth:`finish`."""

    def __init__(self):
        self.text, self.error = [], None
        self.started = asyncio.Event()
        self._task: asyncio.Task | None = None

    @classmethod
    async def start(cls, key: str, model: str, count: int = STREAM_COUNT) -> Stream:
        stream = cls()
        stream._task = asyncio.get_running_loop().create_task(stream._run(key, model, count))
        await asyncio.wait_for(stream.started.wait(), 30)
        assert stream.error is None, stream.error
        return stream

    async def _run(self, key, model, count):
        try:
            response = await InProcessAPI().post("/v1/chat/completions", {
                "model": model, "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": count_prompt(count)}]}, bearer(key))
            assert response.status == 200, (response.status, await response.body())
            pending = b""
            async for piece in response.chunks():
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        self.text.append(chunk["choices"][0]["delta"].get("content", "") if chunk["choices"] else "")
                        self.started.set()
        except Exception as exc:  # reported by finish()
            self.error = exc
            self.started.set()

    async def finish(self) -> str:
        await asyncio.wait_for(self._task, 60)
        assert self.error is None, self.error
        return "".join(self.text)


async def test_every_configured_model_is_listed_loaded_or_not(api, admin):
    assert await loaded(admin) == {}
    ids = [model["id"] for model in (await api.get("/v1/models")).json()["data"]]
    assert ids == ["demo-a", "demo-b", "tiny", "broken"]
    assert (await api.get("/v1/models/gpt-3.5-turbo")).json()["id"] == "demo-a"
    assert (await api.get("/v1/models/demo")).json()["id"] == "demo-a"
    assert (await api.get("/v1/models/tiny")).json()["id"] == "tiny"
    assert (await api.get("/v1/models/nope")).json()["error"]["code"] == "model_not_found"


async def loads(model: str) -> int:
    """How many times ``model`` has been loaded since the registry was configured."""
    return {m["id"]: m["loads"] for m in (await Client().get("/health")).json()["models"]}[model]


async def test_a_model_loads_on_its_first_request_and_waiting_requests_share_the_load(api, admin, user_key):
    assert "demo-b" not in await loaded(admin)
    before = await loads("demo-b")

    results = await asyncio.gather(*(ask(Client(user_key), "demo-b") for _ in range(3)))
    assert [r.status_code for r in results] == [200, 200, 200]
    assert {r.json()["choices"][0]["message"]["content"] for r in results} == {"tiger lemon"}
    demo_b = (await loaded(admin))["demo-b"]
    assert (demo_b["state"], demo_b["in_flight"], demo_b["loads"]) == ("loaded", 0, before + 1)  # one load for three
    assert demo_b["load_seconds"] > 0 and demo_b["loaded_at"] > 0
    assert (await ask(api, "demo-b")).status_code == 200
    assert await loads("demo-b") == before + 1  # loaded stays loaded


async def test_past_max_loaded_models_the_least_recently_used_idle_model_is_unloaded(api, admin):
    assert (await ask(api, "demo-a")).status_code == 200
    assert (await ask(api, "demo-b")).status_code == 200
    assert (await ask(api, "demo-a")).status_code == 200  # demo-b is now the least recently used
    assert set(await loaded(admin)) == {"demo-a", "demo-b"}
    answer = await ask(api, "tiny", max_tokens=5)
    assert answer.status_code == 200
    assert answer.json()["model"] == "tiny"
    assert set(await loaded(admin)) == {"demo-a", "tiny"}


async def test_a_model_with_a_stream_in_flight_is_never_unloaded(api, admin, user_key):
    assert (await ask(api, "demo-b")).status_code == 200
    assert (await ask(api, "demo-a")).status_code == 200  # demo-b least recently used, but busy below
    stream = await Stream.start(user_key, "demo-b")
    answer = await ask(api, "tiny", max_tokens=5)  # demo-a is unloaded, not demo-b
    assert answer.status_code == 200
    assert set(await loaded(admin)) == {"demo-b", "tiny"}
    assert await stream.finish() == count_answer(STREAM_COUNT)


async def test_when_every_loaded_model_is_busy_another_model_gets_503_and_retry_after(api, admin, user_key):
    streams = [await Stream.start(user_key, model) for model in ("demo-a", "demo-b")]
    refused = await ask(api, "tiny")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"] == {
        "message": "The model 'tiny' cannot be loaded now: the server holds at most 2 models in memory and all "
                   "are serving requests. Retry shortly.",
        "type": "server_error", "param": None, "code": "model_capacity"}
    assert [await stream.finish() for stream in streams] == [count_answer(STREAM_COUNT)] * 2
    assert (await ask(api, "tiny", max_tokens=5)).status_code == 200


async def test_an_alias_is_the_model_for_requests_records_and_allowed_models(api, admin):
    from accounts.models import UsageRecord

    response = await api.post("/v1/chat/completions", headers={"X-Request-ID": "alias-1"}, body={
        "model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": repeat_prompt("red fox")}]})
    assert (response.json()["model"], response.json()["choices"][0]["message"]["content"]) == ("demo-a", "red fox")
    await asyncio.to_thread(books.flush)
    record = await sync_to_async(UsageRecord.objects.filter(request_id="alias-1").first)()
    assert record.model == "demo-a"

    _, by_alias = await sync_to_async(issue_key)(name="alias-allowed", allowed_models=["demo"])
    _, by_id = await sync_to_async(issue_key)(name="id-allowed", allowed_models=["demo-b"])
    client = Client()
    for model in ("demo-a", "gpt-3.5-turbo", "demo"):
        assert (await client.post("/v1/chat/completions", headers=bearer(by_alias), body={
            "model": model, "messages": [{"role": "user", "content": "Hello"}]})).status_code == 200
        refused = await client.post("/v1/chat/completions", headers=bearer(by_id), body={
            "model": model, "messages": [{"role": "user", "content": "Hello"}]})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")
    listed = (await client.get("/v1/models", headers=bearer(by_alias))).json()["data"]
    assert [model["id"] for model in listed] == ["demo-a"]


async def test_a_broken_model_gets_503_alone_and_a_later_request_retries_the_load(api, admin, broken_path):
    refused = await ask(api, "broken")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"] == {
        "message": f"The model 'broken' could not be loaded: model folder {broken_path} does not exist",
        "type": "server_error", "param": None, "code": "model_unavailable"}
    assert (await ask(api, "demo-a")).json()["choices"][0]["message"]["content"] == "tiger lemon"
    health = (await Client().get("/health")).json()
    assert health["status"] == "ok"
    assert {m["id"]: m["state"] for m in health["models"]}["broken"] == "failed"

    shutil.copytree(DEMO_MODEL, broken_path)  # the operator fixes the folder
    try:
        assert (await ask(api, "broken")).json()["choices"][0]["message"]["content"] == "tiger lemon"
    finally:
        assert (await admin.post("/v1/models/broken/unload")).status_code == 200
        shutil.rmtree(broken_path)


async def test_loading_and_unloading_need_an_admin_key(api, admin):
    for method, path in (("POST", "/v1/models/tiny/load"), ("POST", "/v1/models/tiny/unload"),
                         ("GET", "/v1/models/loaded")):
        refused = await api.request(method, path)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_key_required"), path
    assert await loaded(admin) == {}

    status = (await admin.post("/v1/models/tiny/load")).json()
    assert (status["id"], status["state"], status["in_flight"]) == ("tiny", "loaded", 0)
    assert (await admin.post("/v1/models/demo/load")).json()["id"] == "demo-a"  # by alias
    assert set(await loaded(admin)) == {"tiny", "demo-a"}
    assert (await admin.post("/v1/models/nope/load")).json()["error"]["code"] == "model_not_found"
    assert (await admin.post("/v1/models/tiny/unload")).json()["state"] == "unloaded"
    assert set(await loaded(admin)) == {"demo-a"}


async def test_a_model_with_requests_in_flight_cannot_be_unloaded(admin, user_key):
    stream = await Stream.start(user_key, "demo-a")
    busy = await admin.post("/v1/models/demo-a/unload")
    assert (busy.status_code, busy.json()["error"]["code"]) == (409, "model_busy")
    assert (await loaded(admin))["demo-a"]["in_flight"] == 1
    assert await stream.finish() == count_answer(STREAM_COUNT)
    assert (await admin.post("/v1/models/demo-a/unload")).json()["state"] == "unloaded"


async def logged_in(prefix: str, **fields) -> AsyncClient:
    """Django's test client (the web site's whole middleware chain), with a new user's session."""
    user = await sync_to_async(make_user)(prefix, **fields)
    browser = AsyncClient()
    await browser.aforce_login(user)
    return browser


async def test_the_admin_models_page_shows_each_model_and_loads_and_unloads(admin):
    browser = await logged_in("models-admin", is_staff=True, is_superuser=True)
    page = (await browser.get("/admin/models/")).content.decode()
    rows = dict(re.findall(r'<tr class="model" data-model="([^"]+)">.*?<td class="state state-(\w+)"', page, re.S))
    assert rows == {"demo-a": "unloaded", "demo-b": "unloaded", "tiny": "unloaded", "broken": "unloaded"}
    response = await browser.post("/admin/models/", {"model": "tiny", "action": "load"})
    assert (response.status_code, response.headers["Location"]) == (302, "/admin/models/")

    # /v1/models/loaded lists a model from the moment it begins to load: wait for "loaded".
    async def tiny_loaded():
        return (await loaded(admin)).get("tiny", {}).get("state") == "loaded"

    await until(tiny_loaded)
    page = (await browser.get("/admin/models/")).content.decode()
    assert re.search(r'data-model="tiny">.*?state-loaded.*?value="unload"', page, re.S)


async def test_staff_who_are_not_superusers_see_the_models_page_but_cannot_load(admin):
    browser = await logged_in("models-staff", is_staff=True)
    assert 'data-model="tiny"' in (await browser.get("/admin/models/")).content.decode()
    refused = await browser.post("/admin/models/", {"model": "tiny", "action": "load"})
    assert refused.status_code == 403
    assert "tiny" not in await loaded(admin)


@pytest.fixture
def kept_alive(config_file, live_db):
    """MODEL_KEEP_ALIVE_SECONDS=1, the clock held; the default model loaded as at start."""
    with clock.frozen() as held, configured(config_file, MODEL_KEEP_ALIVE_SECONDS=1):
        registry.preload()
        yield held


async def test_an_idle_model_is_unloaded_after_its_keep_alive(kept_alive, admin_key):
    client = Client(admin_key)
    assert set(await loaded(client)) == {"demo-a"}  # the default model loads at start
    assert (await ask(client, "tiny", max_tokens=3)).status_code == 200
    assert "tiny" in await loaded(client)
    kept_alive.advance(1)
    await registry.unload_idle()  # what the keep-alive task does every keep_alive / 4 seconds
    assert await loaded(client) == {}
    assert (await ask(client, "demo", max_tokens=3)).status_code == 200  # and loads again when asked


@pytest.mark.server_process
def test_a_models_config_with_a_mistake_stops_the_server_with_one_clear_line(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text('[[models]]\nid = "a"\npath = "models/demo"\n\n[[models]]\nid = "a"\npath = "models/demo"\n')
    server = start_server(tmp_path, wait=False, MODELS_CONFIG=str(config))
    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines()[-1] == (
        f"llmserver: MODELS_CONFIG={config}: model 2: the name 'a' is used twice")
