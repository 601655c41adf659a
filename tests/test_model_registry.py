"""Many models from one MODELS_CONFIG: listed whether loaded or not, loaded on first
request (one load shared by the requests that wait for it), the least recently used idle
one unloaded past MAX_LOADED_MODELS and never one with requests in flight, aliases, a
broken model answering 503 alone, and load/unload for admin keys only."""

from __future__ import annotations

import shutil
import threading

import httpx
import pytest

from demomodel.corpus import count_answer, count_prompt, repeat_prompt
from tests.conftest import DEMO_MODEL, ROOT, bearer, issue_key, log_in, make_user, start_server, wait_for

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
def site(tmp_path_factory, live_db, broken_path):
    folder = tmp_path_factory.mktemp("registry")
    server = start_server(folder, MODELS_CONFIG=models_config(folder, broken_path), MAX_LOADED_MODELS=2,
                          ENGINE_STEP_DELAY_MS=20)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin_key(live_db):
    return issue_key(name="registry-admin", is_admin=True)[1]


@pytest.fixture(scope="module")
def user_key(live_db):
    return issue_key(name="registry-user")[1]


@pytest.fixture
def api(site, user_key):
    with httpx.Client(base_url=site.base_url, timeout=60, headers=bearer(user_key)) as client:
        yield client


@pytest.fixture
def admin(site, admin_key):
    """A client with the admin key; every test starts with no model loaded."""
    with httpx.Client(base_url=site.base_url, timeout=60, headers=bearer(admin_key)) as client:
        for model in ("demo-a", "demo-b", "tiny"):
            assert client.post(f"/v1/models/{model}/unload").status_code == 200
        yield client


def loaded(admin) -> dict[str, dict]:
    return {model["id"]: model for model in admin.get("/v1/models/loaded").json()["data"]}


def ask(api, model: str, content: str = repeat_prompt("tiger lemon"), **fields) -> httpx.Response:
    return api.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": content}], **fields})


# A count the demo model answers exactly (it stops reliably up to 41), 20 ms a step: ~0.8 s in flight.
STREAM_COUNT = 40


class Stream:
    """A streamed request held open in a thread until :meth:`finish`."""

    def __init__(self, site, key: str, model: str, count: int = STREAM_COUNT):
        self.text, self.error = [], None
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(site, key, model, count))
        self._thread.start()
        assert self.started.wait(30), self.error

    def _run(self, site, key, model, count):
        import json

        try:
            with httpx.Client(base_url=site.base_url, timeout=60, headers=bearer(key)) as client:
                with client.stream("POST", "/v1/chat/completions", json={
                        "model": model, "stream": True, "max_tokens": 400,
                        "messages": [{"role": "user", "content": count_prompt(count)}]}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            self.text.append(chunk["choices"][0]["delta"].get("content", "") if chunk["choices"] else "")
                            self.started.set()
        except Exception as exc:  # reported by finish()
            self.error = exc
            self.started.set()

    def finish(self) -> str:
        self._thread.join(60)
        assert self.error is None, self.error
        return "".join(self.text)


def test_every_configured_model_is_listed_loaded_or_not(api, admin):
    assert loaded(admin) == {}
    ids = [model["id"] for model in api.get("/v1/models").json()["data"]]
    assert ids == ["demo-a", "demo-b", "tiny", "broken"]
    assert api.get("/v1/models/gpt-3.5-turbo").json()["id"] == "demo-a"
    assert api.get("/v1/models/demo").json()["id"] == "demo-a"
    assert api.get("/v1/models/tiny").json()["id"] == "tiny"
    assert api.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"


def loads(site, model: str) -> int:
    """How many times ``model`` has been loaded since the server started."""
    return {m["id"]: m["loads"] for m in httpx.get(f"{site.base_url}/health").json()["models"]}[model]


def test_a_model_loads_on_its_first_request_and_waiting_requests_share_the_load(site, api, admin, user_key):
    assert "demo-b" not in loaded(admin)
    before = loads(site, "demo-b")
    results = []

    def request():
        with httpx.Client(base_url=site.base_url, timeout=60, headers=bearer(user_key)) as client:
            results.append(ask(client, "demo-b"))

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert {r.json()["choices"][0]["message"]["content"] for r in results} == {"tiger lemon"}
    demo_b = loaded(admin)["demo-b"]
    assert (demo_b["state"], demo_b["in_flight"], demo_b["loads"]) == ("loaded", 0, before + 1)  # one load for three
    assert demo_b["load_seconds"] > 0 and demo_b["loaded_at"] > 0
    assert ask(api, "demo-b").status_code == 200
    assert loads(site, "demo-b") == before + 1  # loaded stays loaded


def test_past_max_loaded_models_the_least_recently_used_idle_model_is_unloaded(api, admin):
    assert ask(api, "demo-a").status_code == 200
    assert ask(api, "demo-b").status_code == 200
    assert ask(api, "demo-a").status_code == 200  # demo-b is now the least recently used
    assert set(loaded(admin)) == {"demo-a", "demo-b"}
    answer = ask(api, "tiny", max_tokens=5)
    assert answer.status_code == 200
    assert answer.json()["model"] == "tiny"
    assert set(loaded(admin)) == {"demo-a", "tiny"}


def test_a_model_with_a_stream_in_flight_is_never_unloaded(site, api, admin, user_key):
    assert ask(api, "demo-b").status_code == 200
    assert ask(api, "demo-a").status_code == 200  # demo-b least recently used, but busy below
    stream = Stream(site, user_key, "demo-b")
    answer = ask(api, "tiny", max_tokens=5)  # demo-a is unloaded, not demo-b
    assert answer.status_code == 200
    assert set(loaded(admin)) == {"demo-b", "tiny"}
    assert stream.finish() == count_answer(STREAM_COUNT)


def test_when_every_loaded_model_is_busy_another_model_gets_503_and_retry_after(site, api, admin, user_key):
    streams = [Stream(site, user_key, model) for model in ("demo-a", "demo-b")]
    refused = ask(api, "tiny")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert refused.json()["error"] == {
        "message": "The model 'tiny' cannot be loaded now: the server holds at most 2 models in memory and all "
                   "are serving requests. Retry shortly.",
        "type": "server_error", "param": None, "code": "model_capacity"}
    assert [stream.finish() for stream in streams] == [count_answer(STREAM_COUNT)] * 2
    assert ask(api, "tiny", max_tokens=5).status_code == 200


def test_an_alias_is_the_model_for_requests_records_and_allowed_models(site, api, admin):
    from accounts.models import UsageRecord

    response = api.post("/v1/chat/completions", headers={"X-Request-ID": "alias-1"}, json={
        "model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": repeat_prompt("red fox")}]})
    assert (response.json()["model"], response.json()["choices"][0]["message"]["content"]) == ("demo-a", "red fox")
    assert wait_for(lambda: UsageRecord.objects.filter(request_id="alias-1").first()).model == "demo-a"

    _, by_alias = issue_key(name="alias-allowed", allowed_models=["demo"])
    _, by_id = issue_key(name="id-allowed", allowed_models=["demo-b"])
    with httpx.Client(base_url=site.base_url, timeout=60) as client:
        for model in ("demo-a", "gpt-3.5-turbo", "demo"):
            assert client.post("/v1/chat/completions", headers=bearer(by_alias), json={
                "model": model, "messages": [{"role": "user", "content": "Hello"}]}).status_code == 200
            refused = client.post("/v1/chat/completions", headers=bearer(by_id), json={
                "model": model, "messages": [{"role": "user", "content": "Hello"}]})
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")
        listed = client.get("/v1/models", headers=bearer(by_alias)).json()["data"]
        assert [model["id"] for model in listed] == ["demo-a"]


def test_a_broken_model_gets_503_alone_and_a_later_request_retries_the_load(site, api, admin, broken_path):
    refused = ask(api, "broken")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.json()["error"] == {
        "message": f"The model 'broken' could not be loaded: model folder {broken_path} does not exist",
        "type": "server_error", "param": None, "code": "model_unavailable"}
    assert ask(api, "demo-a").json()["choices"][0]["message"]["content"] == "tiger lemon"
    health = httpx.get(f"{site.base_url}/health").json()
    assert health["status"] == "ok"
    assert {m["id"]: m["state"] for m in health["models"]}["broken"] == "failed"

    shutil.copytree(DEMO_MODEL, broken_path)  # the operator fixes the folder
    try:
        assert ask(api, "broken").json()["choices"][0]["message"]["content"] == "tiger lemon"
    finally:
        assert admin.post("/v1/models/broken/unload").status_code == 200
        shutil.rmtree(broken_path)


def test_loading_and_unloading_need_an_admin_key(api, admin):
    for method, path in (("POST", "/v1/models/tiny/load"), ("POST", "/v1/models/tiny/unload"),
                         ("GET", "/v1/models/loaded")):
        refused = api.request(method, path)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_key_required"), path
    assert loaded(admin) == {}

    status = admin.post("/v1/models/tiny/load").json()
    assert (status["id"], status["state"], status["in_flight"]) == ("tiny", "loaded", 0)
    assert admin.post("/v1/models/demo/load").json()["id"] == "demo-a"  # by alias
    assert set(loaded(admin)) == {"tiny", "demo-a"}
    assert admin.post("/v1/models/nope/load").json()["error"]["code"] == "model_not_found"
    assert admin.post("/v1/models/tiny/unload").json()["state"] == "unloaded"
    assert set(loaded(admin)) == {"demo-a"}


def test_a_model_with_requests_in_flight_cannot_be_unloaded(site, admin, user_key):
    stream = Stream(site, user_key, "demo-a")
    busy = admin.post("/v1/models/demo-a/unload")
    assert (busy.status_code, busy.json()["error"]["code"]) == (409, "model_busy")
    assert loaded(admin)["demo-a"]["in_flight"] == 1
    assert stream.finish() == count_answer(STREAM_COUNT)
    assert admin.post("/v1/models/demo-a/unload").json()["state"] == "unloaded"


def test_the_admin_models_page_shows_each_model_and_loads_and_unloads(site, admin, live_db):
    import re

    user = make_user("models-admin", is_staff=True, is_superuser=True)
    with log_in(site, user.username) as browser:
        page = browser.get("/admin/models/").text
        rows = dict(re.findall(r'<tr class="model" data-model="([^"]+)">.*?<td class="state state-(\w+)"', page, re.S))
        assert rows == {"demo-a": "unloaded", "demo-b": "unloaded", "tiny": "unloaded", "broken": "unloaded"}
        response = browser.post("/admin/models/", data={
            "model": "tiny", "action": "load", "csrfmiddlewaretoken": browser.cookies["csrftoken"]})
        assert (response.status_code, response.headers["Location"]) == (302, "/admin/models/")
        # /v1/models/loaded lists a model from the moment it begins to load: wait for "loaded".
        wait_for(lambda: loaded(admin).get("tiny", {}).get("state") == "loaded")
        page = browser.get("/admin/models/").text
        assert re.search(r'data-model="tiny">.*?state-loaded.*?value="unload"', page, re.S)


def test_staff_who_are_not_superusers_see_the_models_page_but_cannot_load(site, admin, live_db):
    user = make_user("models-staff", is_staff=True)
    with log_in(site, user.username) as browser:
        assert 'data-model="tiny"' in browser.get("/admin/models/").text
        refused = browser.post("/admin/models/", data={
            "model": "tiny", "action": "load", "csrfmiddlewaretoken": browser.cookies["csrftoken"]})
        assert refused.status_code == 403
    assert "tiny" not in loaded(admin)


def test_an_idle_model_is_unloaded_after_its_keep_alive(tmp_path, live_db, broken_path, admin_key):
    server = start_server(tmp_path, MODELS_CONFIG=models_config(tmp_path, broken_path), MODEL_KEEP_ALIVE_SECONDS=1)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(admin_key)) as client:
            assert set(loaded(client)) == {"demo-a"}  # the default model loads at start
            assert ask(client, "tiny", max_tokens=3).status_code == 200
            assert "tiny" in loaded(client)
            wait_for(lambda: loaded(client) == {}, timeout=10)
            assert ask(client, "demo", max_tokens=3).status_code == 200  # and loads again when asked
    finally:
        server.stop()


def test_a_models_config_with_a_mistake_stops_the_server_with_one_clear_line(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text('[[models]]\nid = "a"\npath = "models/demo"\n\n[[models]]\nid = "a"\npath = "models/demo"\n')
    server = start_server(tmp_path, wait=False, MODELS_CONFIG=str(config))
    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines()[-1] == (
        f"llmserver: MODELS_CONFIG={config}: model 2: the name 'a' is used twice")
