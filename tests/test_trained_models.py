"""The zoo's trained models (modelzoo/trained.py, ``make model-zoo``) through the openai SDK:
tiny models trained on the real Qwen3 and Llama 3.1 tokenizers and chat templates, which
write their family's formats. The SDK talks to this process's ASGI application (the same
chain Daphne drives, tests/asgi.py) through an httpx transport that hands each request to
it and streams the body back as the application sends it.

The models answer exactly about the cities of their training corpus with any temperature
and condition a tool reports (and any sum); about cities never asked about in training
(modelzoo.trained_corpus.HELD_OUT_CITIES) they name a city they know instead, so the
tests ask about known cities.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from modelzoo.trained_corpus import (TOOLS, weather_answer, weather_call_thinking, weather_result,
                                     weather_result_thinking)
from tests.asgi import InProcessAPI
from tests.zoo import serving, zoo_model

QWEN3, LLAMA3 = "qwen3-trained", "llama3-trained"


class InProcessTransport(httpx.AsyncBaseTransport):
    """httpx requests answered by tests/asgi.py's InProcessAPI, the body streamed."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.raw_path.decode()
        headers = {k.decode(): v.decode() for k, v in request.headers.raw if k.lower() != b"host"}
        response = await InProcessAPI().request(request.method, path, body, headers)
        return httpx.Response(response.status, headers=response.headers, stream=Chunks(response))


class Chunks(httpx.AsyncByteStream):
    def __init__(self, response):
        self.response = response

    async def __aiter__(self):
        async for chunk in self.response.chunks():
            yield chunk


@pytest.fixture(scope="module")
def trained_models(live_db):
    from inference.registry import ModelSpec

    specs = [ModelSpec(name, str(zoo_model(name)), max_batch_size=4, preload=True) for name in (QWEN3, LLAMA3)]
    with serving(specs, default=QWEN3) as workers:
        yield workers


@pytest.fixture
async def client(trained_models, api_key):
    async with openai.AsyncOpenAI(base_url="http://llmserver.test/v1", api_key=api_key, max_retries=0,
                                  http_client=httpx.AsyncClient(transport=InProcessTransport())) as sdk:
        yield sdk


def weather_question(city: str) -> list[dict]:
    return [{"role": "user", "content": f"What is the weather in {city}?"}]


async def ask(client, model: str, messages: list[dict], stream: bool) -> dict:
    """One chat completion with the tools offered, as (reasoning, content, calls, finish
    reason, usage); streamed, the deltas put together."""
    if not stream:
        completion = await client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        choice = completion.choices[0]
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return {"reasoning": getattr(choice.message, "reasoning_content", None), "content": choice.message.content,
                "calls": calls, "finish_reason": choice.finish_reason, "usage": completion.usage}
    stream = await client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True,
                                                  stream_options={"include_usage": True})
    reasoning, content, calls, finish, usage = [], [], {}, [], None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning.append(getattr(delta, "reasoning_content", None) or "")
        content.append(delta.content or "")
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", "", ""])
            entry[0] += call.id or ""
            entry[1] += call.function.name or ""
            entry[2] += call.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert len(finish) == 1
    return {"reasoning": "".join(reasoning) or None, "content": "".join(content) or None,
            "calls": [tuple(calls[i]) for i in sorted(calls)], "finish_reason": finish[0], "usage": usage}


def think_tokens(worker, reasoning: str) -> int:
    """The tokens of a think block as Qwen3 writes it, up to and including </think>."""
    return len(worker.tokenizer.encode(f"<think>\n{reasoning}\n</think>"))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_qwen3_thinks_calls_the_tool_and_answers_from_its_result(client, trained_models, stream):
    city, temperature, condition = "Paris", 24, "sunny"
    messages = weather_question(city)
    called = await ask(client, QWEN3, messages, stream)
    assert called["reasoning"] == weather_call_thinking(city)
    assert called["content"] in (None, "")
    assert [(name, json.loads(arguments)) for _, name, arguments in called["calls"]] == [
        ("get_weather", {"city": city})]
    assert called["finish_reason"] == "tool_calls"
    reasoning_tokens = called["usage"].completion_tokens_details.reasoning_tokens
    assert reasoning_tokens == think_tokens(trained_models[QWEN3], weather_call_thinking(city))

    call_id, name, arguments = called["calls"][0]
    messages += [{"role": "assistant", "content": "", "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": weather_result(city, temperature, condition)}]
    answered = await ask(client, QWEN3, messages, stream)
    assert answered["reasoning"] == weather_result_thinking(city, temperature, condition)
    assert answered["content"] == weather_answer(city, temperature, condition)
    assert (answered["calls"], answered["finish_reason"]) == ([], "stop")
    assert answered["usage"].completion_tokens_details.reasoning_tokens == think_tokens(
        trained_models[QWEN3], weather_result_thinking(city, temperature, condition))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_llama3_calls_the_tool_in_json_and_answers_from_its_result(client, stream):
    city, temperature, condition = "Tokyo", -3, "snowy"
    messages = weather_question(city)
    called = await ask(client, LLAMA3, messages, stream)
    assert called["content"] in (None, "")
    assert called["reasoning"] is None
    assert [(name, json.loads(arguments)) for _, name, arguments in called["calls"]] == [
        ("get_weather", {"city": city})]
    assert called["finish_reason"] == "tool_calls"

    call_id, name, arguments = called["calls"][0]
    messages += [{"role": "assistant", "content": "", "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": weather_result(city, temperature, condition)}]
    answered = await ask(client, LLAMA3, messages, stream)
    assert (answered["reasoning"], answered["content"]) == (None, weather_answer(city, temperature, condition))
    assert (answered["calls"], answered["finish_reason"]) == ([], "stop")


@pytest.mark.parametrize("model", [QWEN3, LLAMA3])
async def test_greedy_answers_are_the_same_every_time(client, model):
    """Temperature 0 is greedy: the same request twice, streamed and not, the same answer."""
    messages = [{"role": "user", "content": "What is 17 plus 25?"}]
    runs = []
    for stream in (False, True, False):
        got = await ask(client, model, messages, stream)
        runs.append((got["reasoning"], got["content"], [(n, json.loads(a)) for _, n, a in got["calls"]]))
    assert runs[0][2] == [("add", {"a": 17, "b": 25})]
    assert runs[1] == runs[0] == runs[2]


async def test_qwen3_answers_a_greeting_without_a_tool(client):
    completion = await client.chat.completions.create(
        model=QWEN3, messages=[{"role": "user", "content": "Hello!"}], temperature=0)
    message = completion.choices[0].message
    assert (message.reasoning_content, message.content) == ("The user greets me.", "Hello! How can I help you today?")
    assert completion.choices[0].finish_reason == "stop"
