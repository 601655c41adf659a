"""GET /openapi.json: the API's OpenAPI 3 schema (inference/openapi.py), public."""

from __future__ import annotations

import httpx
import pytest
from openapi_spec_validator import validate

PATHS = {
    "/v1/chat/completions": "post", "/v1/completions": "post", "/v1/responses": "post",
    "/v1/models": "get", "/v1/models/{model_id}": "get", "/v1/models/loaded": "get",
    "/v1/models/{model_id}/load": "post", "/v1/models/{model_id}/unload": "post",
    "/tokenize": "post", "/detokenize": "post", "/health": "get", "/metrics": "get",
}


@pytest.fixture(scope="module")
def schema(server) -> dict:
    response = httpx.get(f"{server.base_url}/openapi.json", timeout=30)  # no key
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_the_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate(schema)  # raises on an invalid document
    assert schema["info"]["title"] == "llmserver"


def test_the_schema_lists_every_endpoint_and_only_them(schema):
    assert {path: set(operations) for path, operations in schema["paths"].items()} == {
        path: {method} for path, method in PATHS.items()}


def test_every_operation_but_health_asks_for_a_bearer_key(schema):
    assert schema["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key, sk-..."}}
    for path, method in PATHS.items():
        security = schema["paths"][path][method].get("security")
        if path == "/health":
            assert security is None
        else:
            assert {"bearerAuth": []} in security, path


def test_every_refusal_is_documented_with_the_openai_error_shape(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
    for path, method in PATHS.items():
        responses = schema["paths"][path][method]["responses"]
        assert "200" in responses, path
        refusals = {status: answer for status, answer in responses.items() if status.startswith("4")}
        if path != "/health":
            assert "401" in refusals, path
        for answer in refusals.values():
            assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_the_generation_endpoints_document_their_request_bodies_and_streams(schema):
    for path, component in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                            ("/v1/responses", "ResponsesRequest"), ("/tokenize", "TokenizeRequest"),
                            ("/detokenize", "DetokenizeRequest")):
        operation = schema["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{component}"}
        if path.startswith("/v1/"):
            assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
            assert {"400", "401", "403", "404", "413", "415", "429", "503"} <= set(operation["responses"])
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert set(chat["required"]) == {"model", "messages"}
    assert chat["properties"]["n"] == {"type": "integer", "maximum": 16, "minimum": 1, "default": 1}
    assert [branch["type"] for branch in chat["properties"]["stop"]["oneOf"]] == ["string", "array"]
    assert schema["paths"]["/v1/chat/completions"]["post"]["operationId"] == "createChatCompletion"
