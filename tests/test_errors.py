"""Every client mistake gets OpenAI's error shape and the status an OpenAI client expects."""

import json
import logging

import pytest
from django.http import Http404

from llmserver.errors import drf_exception_handler
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer

USER = [{"role": "user", "content": "Hello"}]


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_model_is_404_model_not_found(api):
    error = error_of(api.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER}), 404)
    assert error == {
        "message": "The model 'gpt-9' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize("field, value, code, message", [
    ("temperature", "0.5", "invalid_type", "Invalid value for 'temperature': A valid number is required."),
    ("temperature", 2.5, "invalid_value", "Invalid value for 'temperature': Ensure this value is less than or equal to 2.0."),
    ("top_p", -0.1, "invalid_value", "Invalid value for 'top_p': Ensure this value is greater than or equal to 0.0."),
    ("max_tokens", 0, "invalid_value", "Invalid value for 'max_tokens': Ensure this value is greater than or equal to 1."),
    ("max_tokens", 1.5, "invalid_type", "Invalid value for 'max_tokens': A valid integer is required."),
    ("max_tokens", 10**30, "invalid_value", "Invalid value for 'max_tokens': Ensure this value is less than or equal to 2147483647."),
    ("n", 17, "invalid_value", "Invalid value for 'n': Ensure this value is less than or equal to 16."),
    ("stream", "yes", "invalid_type", "Invalid value for 'stream': Must be a valid boolean."),
    ("stop", ["a", "b", "c", "d", "e"], "invalid_value", "Invalid value for 'stop': Expected a string or a list of up to 4 strings."),
    ("stop", "", "invalid_value", "Invalid value for 'stop': Stop sequences must not be empty strings."),
    ("logprobs", True, "unsupported_parameter", "Invalid value for 'logprobs': 'logprobs' is not supported by this server."),
    ("presence_penalty", 0.5, "unsupported_parameter", "Invalid value for 'presence_penalty': 'presence_penalty' is not supported by this server."),
    ("frequency_penalty", 1, "unsupported_parameter", "Invalid value for 'frequency_penalty': 'frequency_penalty' is not supported by this server."),
    ("logit_bias", {"12": 5}, "unsupported_parameter", "Invalid value for 'logit_bias': 'logit_bias' is not supported by this server."),
    ("tool_choice", "required", "invalid_value", "Invalid value for 'tool_choice': tool_choice 'required' needs 'tools'."),
    ("stream_options", {"include_usage": True}, "invalid_value", "Invalid value for 'stream_options': The 'stream_options' parameter is only allowed when 'stream' is enabled."),
    ("bogus", 1, "unknown_parameter", "Invalid value for 'bogus': Unrecognized request argument supplied: bogus"),
])
def test_an_invalid_or_unsupported_parameter_is_400_naming_it(api, field, value, code, message):
    error = error_of(api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": USER, field: value}), 400)
    assert error == {"message": message, "type": "invalid_request_error", "param": field, "code": code}


def test_neutral_values_of_unsupported_parameters_are_accepted(api):
    response = api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": USER, "max_tokens": 2, "logprobs": False, "presence_penalty": 0,
        "frequency_penalty": 0.0, "logit_bias": {}, "tools": None, "response_format": {"type": "text"},
        "user": "alice", "stop": None,
    })
    assert response.status_code == 200


def test_seed_with_sampling_is_refused(api):
    error = error_of(api.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": USER, "temperature": 0.8, "seed": 1}), 400)
    assert error["param"] == "seed"
    assert error["code"] == "unsupported_parameter"


@pytest.mark.parametrize("messages, param, code", [
    ([], "messages", "invalid_value"),
    ("hello", "messages", "invalid_type"),
    ([{"role": "wizard", "content": "hi"}], "messages[0].role", "invalid_value"),
    ([{"role": "user"}], "messages[0].content", "missing_required_parameter"),
    ([{"role": "user", "content": 5}], "messages[0].content", "invalid_type"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0].type", "invalid_value"),
    ([{"role": "user", "content": "hi", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
     "messages[0].tool_calls", "invalid_value"),
])
def test_a_malformed_message_is_400_with_its_path(api, messages, param, code):
    error = error_of(api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages}), 400)
    assert (error["param"], error["code"]) == (param, code)


def test_null_optional_fields_of_a_message_are_not_given(api):
    assistant = {"role": "assistant", "content": "Hello! How can I help you?", "refusal": None, "audio": None,
                 "function_call": None, "tool_calls": None, "name": None, "annotations": []}
    response = api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [
        {"role": "user", "content": "Hello", "name": None}, assistant,
        {"role": "user", "content": "Repeat after me: tiger lemon"}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "tiger lemon"


@pytest.mark.parametrize("field, value", [("refusal", "I cannot."), ("audio", {"id": "a1"}),
                                          ("function_call", {"name": "f", "arguments": "{}"})])
def test_a_message_field_this_server_does_not_produce_is_refused_when_it_has_a_value(api, field, value):
    error = error_of(api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [
        {"role": "assistant", "content": "x", field: value}, *USER]}), 400)
    assert error == {"message": f"Invalid value for 'messages[0].{field}': '{field}' in a message is not supported "
                                "by this server.",
                     "type": "invalid_request_error", "param": f"messages[0].{field}", "code": "unsupported_parameter"}


def test_an_unknown_field_in_a_content_part_is_refused(api):
    error = error_of(api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "x": 1}]}]}), 400)
    assert error == {"message": "Invalid value for 'messages[0].content[0].x': Unrecognized content part field: x",
                     "type": "invalid_request_error", "param": "messages[0].content[0].x", "code": "unknown_parameter"}


def test_a_missing_model_is_400_missing_required_parameter(api):
    error = error_of(api.post("/v1/chat/completions", json={"messages": USER}), 400)
    assert error == {"message": "Missing required parameter: 'model'.", "type": "invalid_request_error",
                     "param": "model", "code": "missing_required_parameter"}


@pytest.mark.parametrize("body", [b'{"model": ', b"[1, 2]", b'{"model": NaN}', b"\xff\xfe", b""])
def test_malformed_json_is_400(api, body):
    error = error_of(api.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error"


def test_a_body_over_the_size_limit_is_413(api):
    body = b'{"model": "x", "prompt": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    error = error_of(api.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 413)
    assert error == {"message": "Request body too large: the limit is 10 MB.", "type": "invalid_request_error",
                     "param": None, "code": "request_too_large"}


def test_a_wrong_method_is_405(api):
    error = error_of(api.get("/v1/chat/completions"), 405)
    assert error["code"] == "method_not_allowed"
    assert error["message"] == 'Method "GET" not allowed.'


def test_an_unknown_path_is_404_json(api):
    error = error_of(api.get("/v2/nothing"), 404)
    assert error == {"message": "Unknown path: /v2/nothing", "type": "invalid_request_error",
                     "param": None, "code": "not_found"}


def test_a_form_body_is_415(api):
    error = error_of(api.post("/v1/completions", data={"model": MODEL_ID}), 415)
    assert error["code"] == "unsupported_media_type"


@pytest.mark.parametrize("prompt, code", [
    ([], "invalid_value"), (5, "invalid_type"), ([["a"]], "invalid_type"), ([99999999], "invalid_value"),
])
def test_a_bad_completions_prompt_is_400(api, prompt, code):
    error = error_of(api.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt}), 400)
    assert (error["param"], error["code"]) == ("prompt", code)


def test_too_many_choices_in_one_completions_request_is_400(api):
    error = error_of(api.post("/v1/completions", json={"model": MODEL_ID, "prompt": ["a"] * 9, "n": 16}), 400)
    assert error == {"message": "Invalid value for 'prompt': 9 prompts with n=16 make 144 choices; the limit is 128 per request.",
                     "type": "invalid_request_error", "param": "prompt", "code": "invalid_value"}


# --- ?format= is no renderer override (in-process, the API chain as Daphne runs it) -----


@pytest.mark.parametrize("path", ["/health?format=x", "/v1/models?format=xml"])
async def test_a_format_query_is_an_ordinary_parameter_on_a_get(in_process_model, api_key, path, caplog):
    response = await InProcessAPI().get(path, bearer(api_key))
    assert response.status == 200, await response.body()
    body = await response.json()
    assert (body["object"], [m["id"] for m in body["data"]]) == ("list", [MODEL_ID]) if "models" in path else (
        body["status"] == "ok")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_format_query_without_a_key_is_the_401_for_the_missing_key(in_process_model, caplog):
    response = await InProcessAPI().post("/v1/chat/completions?format=xml", {"model": MODEL_ID, "messages": USER})
    assert response.status == 401
    assert (await response.json())["error"] == {
        "message": "You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_an_http404_raised_in_a_view_is_openais_404():
    response = drf_exception_handler(Http404("No such thing."), {})
    assert (response.status_code, json.loads(response.content)) == (404, {"error": {
        "message": "No such thing.", "type": "invalid_request_error", "param": None, "code": "not_found"}})
