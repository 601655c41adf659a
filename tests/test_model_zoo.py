"""Each zoo model (tests/zoo.py) loads through the registry and answers in-process: a
plain-text prompt is encoded exactly as the ``tokenizers`` library encodes it with the
same tokenizer.json (BOS included where its post-processor adds one), decoded back, a greedy completion is reproducible and runs to
max_tokens, and the engine stops on the family's own EOS ids."""

from __future__ import annotations

import functools
import json

import pytest
from tokenizers import Tokenizer

from tests.asgi import InProcessAPI
from tests.conftest import bearer
from tests.zoo import ZOO_FAMILIES, serve_zoo_model, zoo_model

TEXT = "Grüße, 世界 🎉"

# The EOS ids, BOS id and context length of each family's real export, as the
# genai_config.json of the model named first has them (from its generation_config.json).
EXPECTED = {
    "qwen3": ([151645, 151643], 151643, 40960),        # Qwen3-0.6B
    "llama3": ([128001, 128008, 128009], 128000, 131072),  # Llama-3.1-8B-Instruct
    "mistral": ([2], 1, 32768),                         # Mistral-7B-Instruct-v0.2/v0.3
    "gemma": ([1, 106], 2, 32768),                      # gemma-3-1b-it
    "deepseek_r1": ([1], 0, 131072),                    # DeepSeek-R1-Distill-Qwen, DeepSeek's ids
    "phi3": ([32007, 32001, 32000], 1, 131072),        # Phi-3.5-mini-instruct
}


@pytest.fixture(scope="module", params=ZOO_FAMILIES)
def zoo(request, live_db):
    with serve_zoo_model(request.param) as worker:
        yield request.param, worker


@functools.cache
def hf_encoder(name: str) -> Tokenizer:
    """The ``tokenizers`` library's tokenizer of zoo model ``name``, loaded once."""
    return Tokenizer.from_file(str(zoo_model(name) / "tokenizer.json"))


async def post(api_key: str, path: str, body: dict) -> dict:
    response = await InProcessAPI().post(path, body, bearer(api_key))
    payload = await response.json()
    assert response.status == 200, payload
    return payload


async def test_it_is_listed(zoo, api_key):
    name, _ = zoo
    response = await InProcessAPI().get("/v1/models", bearer(api_key))
    assert [model["id"] for model in (await response.json())["data"]] == [name]


async def test_tokenize_equals_the_tokenizers_library(zoo, api_key):
    name, _ = zoo
    # with the special tokens its post-processor adds (BOS for Llama, Mistral, Gemma, Phi-3)
    expected = hf_encoder(name).encode(TEXT)
    counted = await post(api_key, "/tokenize", {"model": name, "prompt": TEXT})
    assert counted["tokens"] == expected.ids
    assert counted["count"] == len(expected.ids)


async def test_detokenize_gives_the_text_back(zoo, api_key):
    name, _ = zoo
    tokens = (await post(api_key, "/tokenize", {"model": name, "prompt": TEXT}))["tokens"]
    assert await post(api_key, "/detokenize", {"model": name, "tokens": tokens}) == {"prompt": TEXT}


async def test_a_greedy_completion_runs_to_max_tokens_and_repeats(zoo, api_key):
    name, _ = zoo
    body = {"model": name, "prompt": "The weather today is", "max_tokens": 8, "temperature": 0}
    first = await post(api_key, "/v1/completions", body)
    second = await post(api_key, "/v1/completions", body)
    assert first["usage"]["completion_tokens"] == 8
    assert first["usage"]["prompt_tokens"] == len(hf_encoder(name).encode(body["prompt"]).ids)
    assert first["choices"][0]["finish_reason"] == "length"
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
    assert second["usage"] == first["usage"]


def test_the_engine_uses_the_familys_eos_and_bos_ids(zoo):
    name, worker = zoo
    eos, bos, context_length = EXPECTED[name]
    assert list(worker.tokenizer.eos_token_ids) == eos
    assert worker.tokenizer.bos_token_id == bos
    model = json.loads((zoo_model(name) / "genai_config.json").read_text())["model"]
    assert (model["eos_token_id"], model["bos_token_id"]) == (eos if len(eos) > 1 else eos[0], bos)
    assert model["context_length"] == context_length


# How many BOS tokens a chat prompt starts with: its template writes the tokenizer's
# bos_token (Llama 3.1, Mistral, Gemma, DeepSeek R1) or none (Qwen3, whose BOS id is
# <|endoftext|>; Phi-3.5), and the server adds none of its own.
CHAT_BOS = {"qwen3": 0, "llama3": 1, "mistral": 1, "gemma": 1, "deepseek_r1": 1, "phi3": 0}


async def test_a_chat_prompt_has_the_bos_its_template_writes_once(zoo, api_key):
    name, _ = zoo
    bos = EXPECTED[name][1]
    counted = await post(api_key, "/tokenize", {"model": name, "messages": [{"role": "user", "content": TEXT}]})
    assert counted["tokens"].count(bos) == CHAT_BOS[name]
    assert counted["tokens"][:CHAT_BOS[name]] == [bos] * CHAT_BOS[name]
