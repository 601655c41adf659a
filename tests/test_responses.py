"""``POST /v1/responses`` through the official SDK: created and streamed, the typed
event stream, instructions, length limits, items in the input; stateless."""

from __future__ import annotations

import openai
import pytest

from accounts.models import UsageRecord
from demomodel.corpus import count_answer, count_prompt, repeat_prompt
from tests.conftest import MODEL_ID, wait_for


@pytest.fixture
def client(server, api_key):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0)


def test_a_response_carries_the_answer_as_output_text_and_counts_its_tokens(client, api):
    response = client.responses.create(model=MODEL_ID, input=repeat_prompt("tiger lemon"),
                                       extra_headers={"X-Request-ID": "responses-1"})
    assert (response.object, response.status, response.model, response.output_text) == (
        "response", "completed", MODEL_ID, "tiger lemon")
    assert response.id.startswith("resp_")
    [message] = response.output
    assert (message.type, message.role, message.status, message.content[0].type) == (
        "message", "assistant", "completed", "output_text")
    counted = api.post("/tokenize", json={"model": MODEL_ID, "messages": [
        {"role": "user", "content": repeat_prompt("tiger lemon")}]}).json()["count"]
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        counted, 2, counted + 2)
    assert response.store is False  # nothing is kept
    record = wait_for(lambda: UsageRecord.objects.filter(request_id="responses-1").first())
    assert (record.endpoint, record.status_code, record.completion_tokens, record.finish_reason) == (
        "responses", 200, 2, "stop")


def test_instructions_are_the_system_message(client, api):
    plain = client.responses.create(model=MODEL_ID, input="Hello")
    instructed = client.responses.create(model=MODEL_ID, input="Hello", instructions="You are a helpful assistant.")
    assert plain.output_text == instructed.output_text == "Hello! How can I help you?"
    assert instructed.instructions == "You are a helpful assistant."
    assert instructed.usage.input_tokens > plain.usage.input_tokens


def test_a_response_cut_by_max_output_tokens_is_incomplete(client):
    response = client.responses.create(model=MODEL_ID, input=count_prompt(50), max_output_tokens=5)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.output_text == "1 2 3 4 5"


def test_the_stream_is_the_typed_events_in_order_with_the_text_in_deltas(client):
    with client.responses.stream(model=MODEL_ID, input=count_prompt(12)) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(deltas) == final.output_text == count_answer(12)
    assert final.usage.output_tokens == 12


def test_input_items_carry_the_conversation(client):
    response = client.responses.create(model=MODEL_ID, input=[
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "2 plus 3 is 5."}]},
        {"role": "user", "content": [{"type": "input_text", "text": repeat_prompt("red fox")}]},
    ])
    assert response.output_text == "red fox"


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "hi", "previous_response_id": "resp_1"}, 400, "previous_response_id", "unsupported_parameter"),
    ({"input": [{"type": "image", "url": "x"}]}, 400, "input[0].type", "unsupported_parameter"),
    ({"input": ""}, 400, "input", "invalid_value"),
    ({"input": "hi", "model": "gpt-9"}, 404, "model", "model_not_found"),
    ({"input": "hi", "tool_choice": "required"}, 400, "tool_choice", "invalid_value"),
    ({"input": "hi", "bogus": 1}, 400, "bogus", "unknown_parameter"),
    ({"input": "hi", "store": True}, 400, "store", "unsupported_parameter"),
])
def test_what_cannot_be_honoured_is_refused_in_openais_shape(api, body, status, param, code):
    response = api.post("/v1/responses", json={"model": MODEL_ID, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                               "additionalProperties": False}}
JSON_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": {
    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}


def test_a_forced_tool_call_with_a_text_format_is_the_call(client):
    """instructor's RESPONSES_TOOLS mode sends both: with the call forced, no text comes
    for the format to shape."""
    response = client.responses.create(model=MODEL_ID, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                                       tool_choice={"type": "function", "name": "get_weather"}, text=JSON_FORMAT)
    [call] = response.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city": "Paris"}')


@pytest.mark.parametrize("body, message", [
    ({"tools": [WEATHER_TOOL], "text": JSON_FORMAT},
     "Invalid value for 'text.format': Give either tools or a JSON 'text.format', not both, unless 'tool_choice' "
     "forces a call."),
    ({"text": {"format": {"type": "json_schema", "name": "n", "schema": {
        "$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}},
        "$ref": "#/$defs/n"}}}},
     "The engine cannot follow this 'text.format' schema: parser error: Too many items (limit 50000; ff_tokens); "
     "try avoiding single-byte/short lexemes"),
])
def test_errors_about_the_text_format_name_text_format(api, body, message):
    response = api.post("/v1/responses", json={"model": MODEL_ID, "input": "What is the weather in Paris?", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "param": "text.format",
                                        "code": "invalid_value"}


def test_a_malformed_text_format_is_a_400_naming_its_field_under_text_format(api):
    response = api.post("/v1/responses", json={"model": MODEL_ID, "input": "hi",
                                               "text": {"format": {"type": "json_schema", "schema": {}}}})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"message": "Missing required parameter: 'text.format.name'.",
                                        "type": "invalid_request_error", "param": "text.format.name",
                                        "code": "missing_required_parameter"}
