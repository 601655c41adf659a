"""JSON output by construction: over many sampled runs at temperature 1, every answer
parses, and with a schema every answer validates against it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema

from tests.conftest import MODEL_ID, bearer

RUNS = 40
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
        "condition": {"type": "string", "enum": ["sunny", "cloudy", "rainy", "snowy", "windy"]},
    },
    "required": ["city", "temperature", "condition"],
    "additionalProperties": False,
}


def sample(server, api_key, response_format, content) -> list[dict]:
    def one(_):
        with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(api_key)) as client:
            return client.post("/v1/chat/completions", json={
                "model": MODEL_ID, "temperature": 1.0, "max_tokens": 96, "response_format": response_format,
                "messages": [{"role": "user", "content": content}]}).json()["choices"][0]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(RUNS)))


def test_json_schema_answers_always_validate(server, api_key):
    choices = sample(server, api_key, {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA,
                                                                              "strict": True}},
                     "What is the weather in Paris? Answer in JSON.")
    for choice in choices:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), WEATHER_SCHEMA)


def test_json_object_answers_always_parse_as_objects(server, api_key):
    choices = sample(server, api_key, {"type": "json_object"}, "What is 2 plus 3? Answer in JSON.")
    for choice in choices:
        assert choice["finish_reason"] == "stop", choice
        assert isinstance(json.loads(choice["message"]["content"]), dict)
