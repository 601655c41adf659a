"""Every error code in one enumeration (llmserver.errors.Code), one class per code with
its status and OpenAI type, every error body built by llmserver.errors, and no code
written as a bare string anywhere else in the project."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from accounts.refusals import TooManyUnknownKeys, UnknownKey, invalid_key, too_many, too_many_unknown_keys
from inference.engine import EngineUnavailable, SamplingParams
from inference.generation import Generation, GenerationFailed, generation_error
from inference.responses import ResponsesServing
from inference.serving import ChatServing
from llmserver import errors
from llmserver.errors import APIError, Code, error_class
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, ROOT, bearer, model_in_process

# The wire format OpenAI clients and this server's own pages read: each code's status
# and type. A change here is a change of the API.
WIRE = {
    "bad_request": (400, "invalid_request_error"),
    "invalid_json": (400, "invalid_request_error"),
    "invalid_value": (400, "invalid_request_error"),
    "invalid_type": (400, "invalid_request_error"),
    "missing_required_parameter": (400, "invalid_request_error"),
    "unknown_parameter": (400, "invalid_request_error"),
    "unsupported_parameter": (400, "invalid_request_error"),
    "duplicate_id": (400, "invalid_request_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "chat_template_missing": (400, "invalid_request_error"),
    "chat_template_unsupported": (400, "invalid_request_error"),
    "chat_template_error": (400, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "model_not_found": (404, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "not_acceptable": (406, "invalid_request_error"),
    "request_timeout": (408, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "unsupported_media_type": (415, "invalid_request_error"),
    "request_header_too_large": (431, "invalid_request_error"),
    "invalid_api_key": (401, "invalid_request_error"),
    "user_inactive": (401, "invalid_request_error"),
    "forbidden": (403, "permission_error"),
    "admin_key_required": (403, "permission_error"),
    "model_not_allowed": (403, "permission_error"),
    "too_many_authentication_failures": (429, "rate_limit_error"),
    "requests_per_minute_limit": (429, "rate_limit_error"),
    "tokens_per_minute_limit": (429, "rate_limit_error"),
    "token_budget_exceeded": (429, "rate_limit_error"),
    "cost_budget_exceeded": (429, "rate_limit_error"),
    "key_concurrency_limit": (429, "rate_limit_error"),
    "user_requests_per_minute_limit": (429, "rate_limit_error"),
    "user_tokens_per_minute_limit": (429, "rate_limit_error"),
    "user_token_budget_exceeded": (429, "rate_limit_error"),
    "user_cost_budget_exceeded": (429, "rate_limit_error"),
    "user_concurrency_limit": (429, "rate_limit_error"),
    "team_requests_per_minute_limit": (429, "rate_limit_error"),
    "team_tokens_per_minute_limit": (429, "rate_limit_error"),
    "team_token_budget_exceeded": (429, "rate_limit_error"),
    "team_cost_budget_exceeded": (429, "rate_limit_error"),
    "team_concurrency_limit": (429, "rate_limit_error"),
    "server_concurrency_limit": (429, "rate_limit_error"),
    "conversation_changed": (409, "invalid_request_error"),
    "model_busy": (409, "invalid_request_error"),
    "model_capacity": (503, "server_error"),
    "model_unavailable": (503, "server_error"),
    "engine_overloaded": (503, "server_error"),
    "engine_unavailable": (503, "server_error"),
    "engine_error": (500, "server_error"),
    "server_shutting_down": (503, "server_error"),
    "internal_error": (500, "server_error"),
}


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in [direct, *_subclasses(direct)]]


_PROJECT_PACKAGES = {"accounts", "chat", "inference", "llmserver"}


def _code_classes() -> dict[str, list[str]]:
    """The project's classes that give an APIError its code, by code (its modules that
    raise errors imported first)."""
    for module in ("accounts.auth", "accounts.limits", "chat.consumers", "inference.views"):
        importlib.import_module(module)
    found: dict[str, list[str]] = {}
    for cls in _subclasses(APIError):
        # Only the project's own: a class a test defines (and the refused one that test
        # leaves behind) lives in a test module, named "tests.…" or "test_…" by how pytest
        # imported it.
        if "code" in vars(cls) and cls.__module__.split(".")[0] in _PROJECT_PACKAGES:
            found.setdefault(str(cls.code), []).append(f"{cls.__module__}.{cls.__qualname__}")
    return found


def test_every_code_has_exactly_one_class_in_llmserver_errors_with_its_status_and_type():
    assert _code_classes() == {str(code): [f"llmserver.errors.{error_class(code).__name__}"] for code in Code}
    assert {str(code): (error_class(code).status, error_class(code).type) for code in Code} == WIRE


def test_a_second_class_for_a_code_is_refused_when_defined():
    with pytest.raises(TypeError, match="invalid_value already has its class, InvalidValue"):
        class Another(APIError):
            status, code = 400, Code.INVALID_VALUE


def test_the_body_is_openais_with_the_code_as_plain_text():
    error = errors.ContextLengthExceeded("Too long.", param="messages")
    assert error.body() == {"error": {"message": "Too long.", "type": "invalid_request_error", "param": "messages",
                                      "code": "context_length_exceeded"}}
    assert type(error.body()["error"]["code"]) is str
    assert json.loads(error.json()) == error.body()
    response = errors.ServerShuttingDown("Bye.", headers={"Retry-After": "5"}).response()
    assert (response.status_code, response["Retry-After"], json.loads(response.content)) == (
        503, "5", {"error": {"message": "Bye.", "type": "server_error", "param": None, "code": "server_shutting_down"}})


def test_reworded_keeps_the_class_param_and_headers_unless_told():
    error = errors.TokenBudgetExceeded("Budget spent.", param="p", headers={"Retry-After": "9"})
    again = error.reworded("You have used all your tokens.")
    assert (type(again), again.message, str(again), again.param, again.headers) == (
        errors.TokenBudgetExceeded, "You have used all your tokens.", "You have used all your tokens.", "p",
        {"Retry-After": "9"})
    assert error.reworded("Other words.", headers={}).headers == {}
    assert error.message == "Budget spent."


def test_a_key_that_does_not_exist_is_refused_by_its_codes_classes():
    unknown = UnknownKey("Incorrect API key provided.")
    assert isinstance(unknown, errors.InvalidAPIKey)
    assert (unknown.status, unknown.code, unknown.headers) == (401, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
    throttled = too_many_unknown_keys(20, 12.5)
    assert isinstance(throttled, UnknownKey) and isinstance(throttled, errors.TooManyAuthenticationFailures)
    assert type(throttled) is TooManyUnknownKeys
    assert (throttled.status, throttled.code, throttled.type, throttled.headers) == (
        429, "too_many_authentication_failures", "rate_limit_error", {"Retry-After": "13"})
    revoked = invalid_key("Revoked.")
    assert (type(revoked), revoked.headers) == (errors.InvalidAPIKey, {"WWW-Authenticate": "Bearer"})
    assert not isinstance(revoked, UnknownKey)


def test_a_limits_refusal_is_its_codes_class_and_only_a_limits():
    refusal = too_many("At the limit.", Code.KEY_CONCURRENCY_LIMIT, 0.2)
    assert (type(refusal), refusal.headers) == (errors.KeyConcurrencyLimit, {"Retry-After": "1"})
    assert type(too_many("At the limit.", "requests_per_minute_limit", 30)) is errors.RequestsPerMinuteLimit
    with pytest.raises(ValueError, match="invalid_value is no limit's refusal"):
        too_many("?", Code.INVALID_VALUE, 1)


# --- the engine's refusals while a stream runs, built in one place ---------------------


@pytest.fixture(scope="module")
def stopped_engine(live_db):
    """The demo model's engine, loaded and then stopped: it takes no turn."""
    with model_in_process() as worker:
        worker.stop()
        assert not worker.running
        yield worker


def _unavailable() -> dict:
    return {"message": f"the engine for model '{MODEL_ID}' is stopped", "type": "server_error", "param": None,
            "code": "engine_unavailable"}


async def test_an_engine_that_stopped_ends_a_chat_stream_with_engine_unavailable(stopped_engine):
    serving = ChatServing(stopped_engine, MODEL_ID)
    generation = Generation(stopped_engine, [np.array([1, 2, 3], dtype=np.int32)], SamplingParams(max_tokens=2))
    chunks = [chunk async for chunk in serving.stream(generation, include_usage=True)]
    assert chunks[-1] == {"error": _unavailable()}
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:-1]] == [{"role": "assistant", "content": ""}]
    assert stopped_engine.queued == 0  # the refused turn gave its place back


async def test_an_engine_that_stopped_fails_a_responses_stream_with_its_error(stopped_engine):
    serving = ResponsesServing(stopped_engine, MODEL_ID)
    generation = Generation(stopped_engine, [np.array([1, 2, 3], dtype=np.int32)], SamplingParams(max_tokens=2))
    events = [event async for event in serving.stream(generation)]
    assert [event["type"] for event in events] == ["response.created", "response.in_progress", "error",
                                                   "response.failed"]
    error = _unavailable()
    assert events[2] == {"type": "error", "sequence_number": 2, "code": error["code"], "message": error["message"],
                         "param": None}
    assert (events[3]["response"]["status"], events[3]["response"]["error"]) == (
        "failed", {"code": "engine_unavailable", "message": error["message"]})


def test_a_failed_turn_keeps_its_own_error():
    failed = errors.EngineError("The model failed while generating: boom")
    assert generation_error(GenerationFailed(failed)) is failed
    unavailable = generation_error(EngineUnavailable("the engine for model 'm' is stopped"))
    assert (type(unavailable), unavailable.body()["error"]["code"]) == (errors.EngineUnavailableError,
                                                                         "engine_unavailable")


async def test_an_accept_header_json_cannot_meet_is_406_not_acceptable(api_key):
    response = await InProcessAPI().get("/v1/models", headers={**bearer(api_key), "accept": "text/html"})
    assert (response.status, await response.json()) == (406, {"error": {
        "message": "Could not satisfy the request Accept header.", "type": "invalid_request_error", "param": None,
        "code": "not_acceptable"}})


# --- no bare codes ------------------------------------------------------------------------

def _project_sources() -> list[Path]:
    return [path for path in sorted(ROOT.rglob("*.py"))
            if not path.relative_to(ROOT).parts[0].startswith(".")
            and path.relative_to(ROOT).parts[0] != "tests" and "migrations" not in path.parts]


def test_no_code_is_written_as_a_string_outside_llmserver_errors():
    codes = {code.value for code in Code}
    bare = set()
    for path in _project_sources():
        name = path.relative_to(ROOT).as_posix()
        if name == "llmserver/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.Constant) and node.value in codes:
                bare.add((name, node.value))
    assert bare == set()


def test_the_scan_sees_the_project_and_would_see_a_bare_code():
    names = {path.relative_to(ROOT).as_posix() for path in _project_sources()}
    assert {"inference/serving.py", "accounts/refusals.py", "chat/refusals.py", "llmserver/patches/http_framing.py"} <= names
    tree = ast.parse('raise APIError(400, "x", code="invalid_value")')
    assert [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and node.value in {code.value for code in Code}] == ["invalid_value"]
