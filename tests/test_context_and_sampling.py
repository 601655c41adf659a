"""The context a model is served with, and sampling that means what the request says.

Served in-process (tests/asgi.py) from copies of the demo model whose genai_config.json
looks like real exports: a 131072-token context (Phi-3.5, Llama 3.1), a search block with
``do_sample: true`` (Qwen, Llama 3.2) or ``top_k: 1`` (Phi-3 ONNX exports)."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import pytest

from demomodel.corpus import count_answer, count_prompt
from inference.model_options import ModelOptions
from inference.registry import ModelSpec, read_models_config, registry
from inference.serving import ChatServing
from tests.asgi import InProcessAPI
from tests.conftest import DEMO_MODEL, ROOT, serving

# A /v1/completions prompt the demo model continues in many ways when it samples (at
# temperature 0.6 and top_k 20 too), and in one way greedily.
UNSURE_PROMPT = "Hi there, my"


def model_copy(folder, **search) -> str:
    """The demo model in ``folder``, its genai_config.json changed: ``context_length``
    (which also sets search.max_length, as the builder does) and any search settings."""
    folder.mkdir()
    for item in DEMO_MODEL.iterdir():
        if item.name != "genai_config.json":
            os.symlink(item, folder / item.name)
    config = json.loads((DEMO_MODEL / "genai_config.json").read_text())
    context = search.pop("context_length", None)
    if context is not None:
        config["model"]["context_length"] = config["search"]["max_length"] = context
    config["search"].update(search)
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    return str(folder)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "long": model_copy(root / "long", context_length=131072),
        "sampling": model_copy(root / "sampling", do_sample=True, temperature=0.6, top_k=20, top_p=0.95),
        "top1": model_copy(root / "top1", do_sample=True, temperature=0.7, top_k=1),
    }


@pytest.fixture
def serve(live_db):
    """Serve the given specs in-process (no API keys), the first loaded at once."""
    with ExitStack() as served:

        def configure(*specs):
            served.enter_context(serving(list(specs), default=specs[0].id))
            return InProcessAPI()

        yield configure


@pytest.fixture(autouse=True)
def no_keys(settings):
    settings.REQUIRE_API_KEY = False


async def post(api, path, body):
    response = await api.post(path, body)
    return response.status, await response.json()


async def completion(api, model, prompt, **params):
    status, body = await post(api, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 24, **params})
    assert status == 200, body
    return body["choices"][0]["text"]


async def chat(api, model, content, **params):
    return await post(api, "/v1/chat/completions",
                      {"model": model, "messages": [{"role": "user", "content": content}], **params})


# --- context and memory -------------------------------------------------------------------


async def test_a_131072_context_model_is_served_with_max_model_len_4096_within_a_memory_bound(serve, folders, settings):
    assert settings.MAX_MODEL_LEN == 4096
    before = resident_bytes()
    api = serve(ModelSpec("long", folders["long"], max_batch_size=4))
    worker = registry.slots()[0].worker
    assert worker.context_length == 4096

    answers = [await chat(api, "long", count_prompt(n)) for n in (5, 6, 7, 8)]

    assert [(status, body["choices"][0]["message"]["content"]) for status, body in answers] == [
        (200, count_answer(n)) for n in (5, 6, 7, 8)]
    # ~6 KB of cache a token: 24 MB a sequence at 4096 tokens, 768 MB at 131072. Loading
    # measures the batch with 4 sequences, so a cache sized by the model's own context
    # would take 3 GB here.
    assert resident_bytes() - before < 400 * 2**20
    listed = await (await api.get("/v1/models")).json()
    assert [(m["id"], m["max_model_len"]) for m in listed["data"]] == [("long", 4096)]
    health = await (await api.get("/health")).json()
    assert health["models"][0]["context_length"] == 4096
    status, counted = await post(api, "/tokenize", {"model": "long", "prompt": "1 2 3"})
    assert (status, counted["max_model_len"]) == (200, 4096)


async def test_a_prompt_past_max_model_len_is_refused_with_the_effective_context(serve, folders):
    api = serve(ModelSpec("long", folders["long"], max_batch_size=4, model_options=ModelOptions(max_model_len=64)))

    status, body = await completion_status(api, "long", list(range(10, 80)))

    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["message"].startswith(
        "This model's maximum context length is 64 tokens. However, your prompt resulted in 70 tokens.")
    # A turn asking for more tokens than the context holds ends there, with "length".
    status, body = await post(api, "/v1/completions", {"model": "long", "prompt": "1 2 3 4 5", "max_tokens": 500})
    assert (status, body["choices"][0]["finish_reason"], body["usage"]["total_tokens"]) == (200, "length", 64)


async def completion_status(api, model, prompt):
    return await post(api, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 5})


async def test_v1_models_shows_each_models_effective_context_loaded_or_not(serve, folders):
    api = serve(ModelSpec("demo", str(DEMO_MODEL), max_batch_size=4, model_options=ModelOptions(max_model_len=300)),
                ModelSpec("long", folders["long"], model_options=ModelOptions(max_model_len=8192)),
                ModelSpec("short", str(DEMO_MODEL), engine_options={"search": {"max_length": 256}},
                          model_options=ModelOptions(max_model_len=4096)),
                ModelSpec("missing", str(ROOT / "models" / "not-there")))

    listed = await (await api.get("/v1/models")).json()

    assert [(m["id"], m["max_model_len"]) for m in listed["data"]] == [
        ("demo", 300), ("long", 8192), ("short", 256), ("missing", None)]
    assert (await (await api.get("/v1/models/long")).json())["max_model_len"] == 8192


async def test_max_model_len_comes_from_models_config_else_from_max_model_len(serve, folders, tmp_path, settings):
    settings.MAX_MODEL_LEN = 200
    (tmp_path / "models.toml").write_text(f"""
[[models]]
id = "own"
path = "{folders['long']}"
max_model_len = 300

[[models]]
id = "default"
path = "{folders['long']}"
""")
    specs, _ = read_models_config(str(tmp_path / "models.toml"))
    api = serve(*specs)

    listed = await (await api.get("/v1/models")).json()
    status, body = await post(api, "/v1/completions", {"model": "default", "prompt": "1 2 3", "max_tokens": 500})

    assert [(m["id"], m["max_model_len"]) for m in listed["data"]] == [("own", 300), ("default", 200)]
    assert registry.slots()[0].worker.context_length == 300
    assert (status, body["usage"]["total_tokens"], registry.slots()[1].worker.context_length) == (200, 200, 200)


async def test_the_docs_engine_options_example_runs_as_written(serve, tmp_path):
    """models.example.toml with its commented ``search = { max_length = 256 }`` lines on."""
    text = (ROOT / "models.example.toml").read_text()
    text = text.replace("# [models.engine_options]", "[models.engine_options]").replace(
        "# search = { max_length = 256 }", "search = { max_length = 256 }")
    text = text.replace('path = "models/', f'path = "{ROOT}/models/')
    (tmp_path / "models.toml").write_text(text)
    specs, default = read_models_config(str(tmp_path / "models.toml"))
    assert specs[1].engine_options == {"search": {"max_length": 256}}
    api = serve(*specs)

    status, body = await chat(api, default, count_prompt(5))
    assert (status, body["choices"][0]["message"]["content"]) == (200, count_answer(5))
    # The entry with the engine options, loaded on its first request.
    status, body = await post(api, "/v1/completions", {"model": "llmserver-tiny", "prompt": "1 2 3", "max_tokens": 300})
    assert (status, body["choices"][0]["finish_reason"], body["usage"]["total_tokens"]) == (200, "length", 256)
    assert registry.slots()[1].worker.context_length == 256


# --- sampling -----------------------------------------------------------------------------


async def test_temperature_0_is_greedy_whatever_the_models_search_block_says(serve, folders):
    api = serve(ModelSpec("sampling", folders["sampling"], max_batch_size=4),
                ModelSpec("demo", str(DEMO_MODEL), max_batch_size=4))
    greedy = await completion(api, "demo", UNSURE_PROMPT, temperature=0)

    answers = [await completion(api, "sampling", UNSURE_PROMPT, temperature=0) for _ in range(5)]
    omitted = [await completion(api, "sampling", UNSURE_PROMPT) for _ in range(2)]  # DEFAULT_TEMPERATURE 0
    seeded = await completion(api, "sampling", UNSURE_PROMPT, temperature=0, seed=7)

    assert answers == [greedy] * 5
    assert omitted == [greedy] * 2
    assert seeded == greedy


async def test_top_p_0_and_top_k_1_are_greedy_at_any_temperature(serve, folders):
    api = serve(ModelSpec("sampling", folders["sampling"], max_batch_size=4))
    greedy = await completion(api, "sampling", UNSURE_PROMPT, temperature=0)

    assert await completion(api, "sampling", UNSURE_PROMPT, temperature=1.5, top_p=0) == greedy
    assert await completion(api, "sampling", UNSURE_PROMPT, temperature=1.5, top_k=1) == greedy


async def test_a_model_with_top_k_1_in_its_search_block_samples_when_asked(serve, folders):
    api = serve(ModelSpec("top1", folders["top1"], max_batch_size=4))

    texts = [await completion(api, "top1", UNSURE_PROMPT, temperature=1.0) for _ in range(6)]
    status, body = await chat(api, "top1", count_prompt(5), temperature=0.8, top_p=0.9)

    assert len(set(texts)) > 1  # sampled from more than the top logit
    assert (status, body["choices"][0]["finish_reason"]) == (200, "stop")


async def test_seed_with_sampling_is_refused_on_the_cpu_scheduler(serve, folders):
    api = serve(ModelSpec("sampling", folders["sampling"], max_batch_size=4))
    assert registry.slots()[0].worker.dynamic_batching is False

    status, body = await completion_status_with(api, temperature=0.8, seed=3)

    assert status == 400
    assert (body["error"]["param"], body["error"]["code"]) == ("seed", "unsupported_parameter")


async def completion_status_with(api, **params):
    return await post(api, "/v1/completions", {"model": "sampling", "prompt": UNSURE_PROMPT, "max_tokens": 5, **params})


async def test_generation_defaults_fill_only_what_a_request_leaves_out(serve, folders):
    api = serve(ModelSpec("sampling", folders["sampling"], max_batch_size=4,
                          model_options=ModelOptions(generation_defaults=True)),
                ModelSpec("plain", folders["sampling"], max_batch_size=4))
    worker = registry.slots()[0].worker
    serving = ChatServing(worker, "sampling")

    omitted = serving.sampling({}, 10)
    partly = serving.sampling({"temperature": 0.3, "top_k": 5}, 10)
    greedy = serving.sampling({"temperature": 0}, 10)

    assert (omitted.temperature, omitted.top_p, omitted.top_k) == (0.6, 0.95, 20)
    assert (partly.temperature, partly.top_p, partly.top_k) == (0.3, 0.95, 5)
    assert greedy.temperature == 0
    # Without the opt-in the same folder's search block fills nothing.
    await chat(api, "plain", "Hello")
    plain = ChatServing(registry.slots()[1].worker, "plain").sampling({}, 10)
    assert (plain.temperature, plain.top_p, plain.top_k) == (0.0, None, None)
    # Over HTTP: the model's own temperature samples; temperature 0 does not.
    sampled = {await completion(api, "sampling", UNSURE_PROMPT) for _ in range(6)}
    greedy_texts = {await completion(api, "sampling", UNSURE_PROMPT, temperature=0) for _ in range(3)}
    assert len(sampled) > 1
    assert len(greedy_texts) == 1

