"""Schemathesis against the served OpenAPI schema (GET /openapi.json) of a live server:
requests generated from every operation's schema, valid ones (positive) and ones that
break it (negative), get no 5xx, and every 4xx is in OpenAI's error shape.

Repeatable and bounded: Hypothesis is derandomized (the same requests each run) and
makes a fixed number of examples per operation; valid requests name the demo model and
their generations are capped at a few tokens.
The key has no admin flag, so the load/unload operations are fuzzed too, into their 403.

The server is the session's shared one, over HTTP (not schemathesis's in-process ASGI
client): part of what negative cases send is answered by the HTTP layer in front of the
application (Daphne and llmserver/patches/http_framing.py). The log read is what the server
wrote since this module began.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import MODEL_ID, bearer, issue_key, server_record_for

pytestmark = pytest.mark.timeout(600)

OPERATIONS = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses"),
    ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("GET", "/v1/models/loaded"),
    ("POST", "/v1/models/{model_id}/load"), ("POST", "/v1/models/{model_id}/unload"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/health"), ("GET", "/metrics"),
]
EXAMPLES_PER_OPERATION = 60
# Valid requests run the model: a few tokens each keep the whole run near a minute.
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MAX_TOKENS = 4
_MAX_N = 2


@pytest.fixture(scope="module")
def fuzzed(server):
    """The shared server after every case of CASES was fuzzed against it (first, whatever
    order the tests run in), each case's outcome, and where the server's log stood
    before."""
    begun = len(server.log())
    schema = schemathesis.openapi.from_dict(httpx.get(f"{server.base_url}/openapi.json", timeout=30).json())
    key = issue_key(name="fuzzing")[1]
    outcomes = {case: _fuzz(server, schema, key, *case) for case in CASES}
    return server, outcomes, begun


def openai_error_shape(ctx, response, case) -> None:
    """A schemathesis check: a 4xx answers ``{"error": {"message", "type", "param",
    "code"}}``, with a message that is a sentence, not a traceback."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} with {content_type}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert "Traceback" not in error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


def _for_the_demo_model(case):
    """A valid case names the served model (a random name is a 404 before anything else
    is looked at), and its generation is capped (a valid max_tokens is up to 2**31 - 1)."""
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = MODEL_ID
    if isinstance(case.body, dict):
        if "model" in case.body:
            case.body["model"] = MODEL_ID
        for field in _TOKEN_FIELDS:
            if type(case.body.get(field)) is int and case.body[field] > _MAX_TOKENS:
                case.body[field] = _MAX_TOKENS
        if type(case.body.get("n")) is int and case.body["n"] > _MAX_N:
            case.body["n"] = _MAX_N
    return case


# An operation without a body or parameters has no invalid request to generate.
_WITHOUT_INPUT = {("GET", "/v1/models"), ("GET", "/v1/models/loaded"), ("GET", "/health"), ("GET", "/metrics")}
CASES = [(method, path, mode) for method, path in OPERATIONS for mode in ("valid", "invalid")
         if mode == "valid" or (method, path) not in _WITHOUT_INPUT]
_MODES = {"valid": schemathesis.GenerationMode.POSITIVE, "invalid": schemathesis.GenerationMode.NEGATIVE}


def _fuzz(server, schema, key, method, path, mode) -> tuple[set[int], int, Exception | None]:
    """One operation's generated requests: the statuses answered, /health's status after
    them, and the failure of a check (None if every check held)."""
    operation = schema[path][method]
    statuses = set()

    strategy = operation.as_strategy(generation_mode=_MODES[mode])

    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy.map(_for_the_demo_model) if mode == "valid" else strategy)
    def run(case):
        response = case.call(base_url=server.base_url, headers=bearer(key), timeout=120)
        statuses.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, openai_error_shape])

    try:
        run()
    except Exception as failure:  # reported by the case's own test
        return statuses, httpx.get(f"{server.base_url}/health", timeout=30).status_code, failure
    return statuses, httpx.get(f"{server.base_url}/health", timeout=30).status_code, None


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_generated_requests_get_no_server_error_and_every_refusal_in_openai_shape(fuzzed, method, path, mode):
    _, outcomes, _ = fuzzed
    statuses, health, failure = outcomes[(method, path, mode)]
    if failure is not None:
        raise failure
    assert statuses and max(statuses) < 500, statuses
    assert health == 200


def test_the_server_stays_healthy_and_its_log_has_no_traceback_after_fuzzing(fuzzed):
    server, _, begun = fuzzed
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
    # The server writes usage in order: once a request sent now is recorded, so is every
    # fuzzed one, and a failure to write them would be in the log.
    sentinel = f"after-fuzzing-{uuid.uuid4().hex}"
    assert httpx.get(f"{server.base_url}/v1/models", timeout=30,
                     headers={**bearer(issue_key(name="after fuzzing")[1]), "X-Request-ID": sentinel}).status_code == 200
    server_record_for(sentinel)
    log = server.log()[begun:]
    assert "Traceback" not in log
    assert "accounting failed" not in log
