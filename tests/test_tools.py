"""Tool calling through the official SDK on the demo model: a call and its result, not
streamed and streamed; ``tool_choice="required"`` and a named function always give a
call valid against the tool's schema (grammar-constrained), even at temperature 1."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from tests.conftest import MODEL_ID

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
RESULT = {"city": "Paris", "temperature": 18, "condition": "sunny"}
ANSWER = "In Paris it is 18 degrees and sunny."


@pytest.fixture
def client(server, api_key):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0)


def test_the_model_calls_the_tool_and_answers_from_its_result(client):
    first = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, tools=[TIME, WEATHER])
    choice = first.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    [call] = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "get_weather", {"city": "Paris"})
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call.id)

    second = client.chat.completions.create(model=MODEL_ID, tools=[TIME, WEATHER], messages=[
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)},
    ])
    assert (second.choices[0].finish_reason, second.choices[0].message.content) == ("stop", ANSWER)


def test_the_guides_loop_appending_the_message_object_as_it_came_is_answered(client):
    """OpenAI's function-calling guide appends ``completion.choices[0].message`` itself:
    the SDK then sends its unset fields back as null (refusal, audio, function_call)."""
    messages = [*QUESTION]
    first = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=[TIME, WEATHER])
    message = first.choices[0].message
    messages.append(message)
    messages.append({"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps(RESULT)})
    second = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=[TIME, WEATHER])
    assert (second.choices[0].finish_reason, second.choices[0].message.content) == ("stop", ANSWER)


def test_a_forced_call_with_a_json_response_format_is_the_call(client):
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, tools=[WEATHER], response_format={"type": "json_object"},
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    [call] = completion.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


def test_a_streamed_call_sends_its_id_and_name_first_then_its_arguments(client):
    stream = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, tools=[WEATHER], stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [(d.index, d.id is not None, d.function.name) for d in deltas[:1]] == [(0, True, "get_weather")]
    assert deltas[0].function.arguments == ""
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_without_tools_the_same_question_is_answered_in_words(client):
    answer = client.chat.completions.create(model=MODEL_ID, messages=QUESTION)
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("content", ["What is the weather in Tokyo?", "What time is it in Rome?",
                                     "How is the weather in New York?", "What's the time in Cairo?"])
def test_required_always_gives_a_call_valid_against_the_schema_even_sampling(client, content):
    for _ in range(8):
        response = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": content}], tools=[WEATHER, TIME],
            tool_choice="required", temperature=1.0, max_tokens=64)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        for call in choice.message.tool_calls:
            tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
            jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


@pytest.mark.parametrize("content", ["Repeat after me: tiger lemon", "What is 2 plus 3?"])
def test_required_makes_a_valid_call_of_a_question_that_needs_no_tool(client, content):
    """Greedy: the grammar makes the call well-formed, but the 2M-parameter model forced
    into a call it has no reason for may fill the city with a count that runs past
    max_tokens (finish "length": sampled, ~2% of such calls; greedy, "Hello" always)."""
    response = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], tools=[WEATHER, TIME],
        tool_choice="required", max_tokens=64)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    for call in choice.message.tool_calls:
        tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_named_function_is_the_one_called(client):
    response = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, tools=[WEATHER, TIME], temperature=1.0,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    [call] = response.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])


def test_the_responses_api_calls_the_tool_and_answers_from_its_output(client):
    tool = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
            "parameters": WEATHER["function"]["parameters"]}
    first = client.responses.create(model=MODEL_ID, input="What is the weather in Paris?", tools=[tool])
    [call] = first.output
    assert (call.type, call.name, json.loads(call.arguments), call.status) == (
        "function_call", "get_weather", {"city": "Paris"}, "completed")
    second = client.responses.create(model=MODEL_ID, tools=[tool], input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(RESULT)},
    ])
    assert second.output_text == ANSWER

    with client.responses.stream(model=MODEL_ID, input="What is the weather in Paris?", tools=[tool]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    assert final.output[0].name == "get_weather"
