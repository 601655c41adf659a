"""``/tokenize`` and ``/detokenize``: the model's own tokenizer, so that a client can
count a request's tokens before sending it; the count equals the request's
``usage.prompt_tokens``."""

import pytest

from tests.conftest import MODEL_ID

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
    {"role": "user", "content": "Repeat after me: tiger lemon"},
]


def test_messages_count_exactly_what_a_chat_completion_counts(api):
    counted = api.post("/tokenize", json={"model": MODEL_ID, "messages": MESSAGES}).json()
    used = api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": MESSAGES}).json()["usage"]
    assert counted["count"] == used["prompt_tokens"] == len(counted["tokens"])
    assert counted["max_model_len"] == 512


def test_a_prompt_counts_exactly_what_a_completion_counts(api):
    counted = api.post("/tokenize", json={"model": MODEL_ID, "prompt": "Count from 1 to 5."}).json()
    used = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Count from 1 to 5.", "max_tokens": 2}).json()
    assert counted["count"] == used["usage"]["prompt_tokens"]


def test_without_the_generation_prompt_the_assistants_opening_is_not_counted(api, demo_tokenizer):
    with_opening = api.post("/tokenize", json={"model": MODEL_ID, "messages": MESSAGES}).json()
    without = api.post("/tokenize", json={"model": MODEL_ID, "messages": MESSAGES,
                                          "add_generation_prompt": False}).json()
    # "<|im_start|>assistant\n": three tokens in the demo model's tokenizer.
    opening = len(demo_tokenizer.encode("<|im_start|>assistant\n"))
    assert with_opening["tokens"] == without["tokens"] + with_opening["tokens"][without["count"]:]
    assert with_opening["count"] - without["count"] == opening


def test_detokenize_gives_back_the_text(api):
    tokens = api.post("/tokenize", json={"model": MODEL_ID, "prompt": "Repeat after me: tiger lemon"}).json()["tokens"]
    assert api.post("/detokenize", json={"model": MODEL_ID, "tokens": tokens}).json() == {
        "prompt": "Repeat after me: tiger lemon"}


@pytest.mark.parametrize("path, body, status, code, param", [
    ("/tokenize", {"model": MODEL_ID}, 400, "invalid_value", "prompt"),
    ("/tokenize", {"model": MODEL_ID, "prompt": "a", "messages": MESSAGES}, 400, "invalid_value", "prompt"),
    ("/tokenize", {"model": "gpt-9", "prompt": "a"}, 404, "model_not_found", "model"),
    ("/detokenize", {"model": MODEL_ID, "tokens": [1, 999999]}, 400, "invalid_value", "tokens"),
    ("/detokenize", {"model": MODEL_ID, "tokens": "12"}, 400, "invalid_type", "tokens"),
])
def test_bad_requests_are_refused_in_openais_shape(api, path, body, status, code, param):
    response = api.post(path, json=body)
    assert response.status_code == status
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)


def test_a_key_is_needed(server):
    import httpx

    response = httpx.post(f"{server.base_url}/tokenize", json={"model": MODEL_ID, "prompt": "a"})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")
