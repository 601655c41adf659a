"""``response_format``: JSON output by construction (the engine's guidance), valid against
the schema when one is given; refused in OpenAI's shape when malformed."""

from __future__ import annotations


import pytest

from tests.conftest import MODEL_ID

USER = [{"role": "user", "content": "Answer in JSON: what is 2 plus 3?"}]


def ask(api, response_format, **fields):
    return api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": USER, "response_format": response_format, **fields})


@pytest.mark.parametrize("response_format, param, code, message", [
    ({"type": "xml"}, "response_format.type", "invalid_value",
     "Invalid value for 'response_format.type': \"xml\" is not a valid choice."),
    ({"type": "json_schema"}, "response_format.json_schema", "missing_required_parameter",
     "Missing required parameter: 'response_format.json_schema'."),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}, "response_format",
     "invalid_value", "The engine cannot follow this 'response_format' schema: Invalid type: frobnicate"),
])
def test_a_malformed_response_format_is_a_400_naming_it(api, response_format, param, code, message):
    response = ask(api, response_format)
    assert response.status_code == 400
    assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}


def test_text_is_plain_output(api):
    response = api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": "Repeat after me: tiger lemon"}],
        "response_format": {"type": "text"}})
    assert response.json()["choices"][0]["message"]["content"] == "tiger lemon"


def test_a_tool_schema_the_engine_cannot_follow_is_a_400_naming_the_tools(api):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "frobnicate"}}}
    response = api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": USER, "tools": [tool], "tool_choice": "required"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "The engine cannot follow this 'tools' schema: at 3(7): failed to compile JSON schema: "
                   "Invalid type: frobnicate",
        "type": "invalid_request_error", "param": "tools", "code": "invalid_value"}
