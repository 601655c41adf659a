"""The official openai SDK, pointed at llmserver, works as it does against OpenAI."""

import openai
import pytest

from tests.conftest import MODEL_ID


@pytest.fixture
def client(server, api_key):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0)


def test_models_list(client):
    assert [m.id for m in client.models.list()] == [MODEL_ID]


def test_chat_completion(client):
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Repeat after me: green window"}])
    assert completion.choices[0].message.content == "green window"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0


def test_chat_completion_stream(client):
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "What is 9 plus 8?"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "9 plus 8 is 17."
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_completion(client):
    completion = client.completions.create(
        model=MODEL_ID, prompt="<|im_start|>user\nWhat is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n")
    assert completion.choices[0].text == "1 plus 2 is 3."


def test_an_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
