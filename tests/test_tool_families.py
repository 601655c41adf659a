"""Tool calls through the HTTP API (in-process) on the zoo's tiny random-weight models of
real families (``make model-zoo`` builds them in .zoo/models): with ``tool_choice``
"required" or a named function the grammar makes even a random model write a call in its
family's own format, and the server must hand it back as ``tool_calls``, streamed and
not, with finish_reason "tool_calls" and no marker in the content.

Two families whose markers are special tokens are made from zoo models by giving unused
special tokens the markers' text: Mistral's ``[TOOL_CALLS]``/``[ARGS]`` (the newer
name-``[ARGS]`` form) and Phi-4-mini's ``<|tool_call|>``/``<|/tool_call|>``. The model
must then write those very tokens, which the decoder gives back as text for the parser.

Two families' own templates do not show the ``tools`` parameter to the model, so the
server refuses tools for them (inference/chat_template.py's probe): DeepSeek's (R1 and
V3.x expect the tools described in the system message by the caller) and Phi-4-mini's
(which takes them inside the system message). They are served here with the override
templates below, which show ``tools`` and write calls in each family's own format.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from inference.engine import EngineWorker, ModelLoadError
from inference.model_options import ModelOptions
from tests.asgi import InProcessAPI
from tests.conftest import bearer
from tests.zoo import serving, zoo_model

ROOT = Path(__file__).resolve().parent.parent
CITIES = ["Paris", "Rome", "Tokyo"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}}, "required": ["city"],
                   "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]

# Phi-4-mini's format, with the tools from the template's ``tools`` variable.
PHI4_MINI_TEMPLATE = (
    "{% if tools %}<|system|>You are a helpful assistant with some tools.<|tool|>{{ tools | tojson }}<|/tool|><|end|>"
    "{% endif %}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# DeepSeek-R1's format (fenced calls), with the tools described in the system prompt.
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% if tools %}## Tools\n{% for tool in tools %}### {{ tool.function.name }}\n"
    "Parameters: {{ tool.function.parameters | tojson }}\n{% endfor %}{% endif %}"
    "{% for message in messages %}{% if message.role == 'user' %}<｜User｜>{{ message.content }}"
    "{% elif message.role == 'assistant' and message.tool_calls %}<｜Assistant｜><｜tool▁calls▁begin｜>"
    "{% for call in message.tool_calls %}<｜tool▁call▁begin｜>function<｜tool▁sep｜>{{ call.function.name }}\n"
    "```json\n{{ call.function.arguments | tojson }}\n```<｜tool▁call▁end｜>{% endfor %}"
    "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
    "{% elif message.role == 'assistant' %}<｜Assistant｜>{{ message.content }}<｜end▁of▁sentence｜>"
    "{% elif message.role == 'tool' %}<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{{ message.content }}"
    "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")

# family -> (zoo model, tool_parser option, special tokens renamed to markers: id -> text,
#            chat template override or None)
FAMILIES = {
    "qwen3": ("qwen3", "auto", {}, None),
    "llama3": ("llama3", "auto", {}, None),
    "mistral": ("mistral", "auto", {}, None),
    "deepseek_r1": ("deepseek_r1", "auto", {}, "deepseek.jinja"),
    "mistral_special_tokens": ("mistral", "auto", {3: "[TOOL_CALLS]", 4: "[ARGS]"}, None),
    "phi4_mini_special_tokens": ("phi3", "phi4_mini", {32002: "<|tool_call|>", 32003: "<|/tool_call|>"}, "phi4.jinja"),
}
PARSER_OF = {"qwen3": "hermes", "llama3": "llama3_json", "mistral": "mistral", "deepseek_r1": "deepseek",
             "mistral_special_tokens": "mistral", "phi4_mini_special_tokens": "phi4_mini"}


def model_folder(family: str, tmp: Path) -> Path:
    zoo_name, _, renamed, template = FAMILIES[family]
    source = zoo_model(zoo_name)
    if not renamed and template is None:
        return source
    folder = tmp / family
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != "tokenizer.json":
            os.symlink(entry, folder / entry.name)
    if template is not None:
        (folder / template).write_text({"phi4.jinja": PHI4_MINI_TEMPLATE, "deepseek.jinja": DEEPSEEK_TEMPLATE}[template])
    if not renamed:
        os.symlink(source / "tokenizer.json", folder / "tokenizer.json")
        return folder
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    added = [token for token in tokenizer["added_tokens"] if token["id"] not in renamed]
    for token_id, text in renamed.items():
        added.append({"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
    tokenizer["added_tokens"] = sorted(added, key=lambda token: token["id"])
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    return folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, live_db):
    from inference.registry import ModelSpec

    name = request.param
    path = model_folder(name, tmp_path_factory.mktemp("families"))
    options = ModelOptions(max_model_len=1024, tool_parser=FAMILIES[name][1], chat_template=FAMILIES[name][3])
    with serving([ModelSpec(name, str(path), max_batch_size=4, model_options=options)], default=name) as workers:
        yield name, workers[name]


def body(model: str, **fields) -> dict:
    return {"model": model, "messages": QUESTION, "tools": [WEATHER, TIME], "tool_choice": "required",
            "parallel_tool_calls": False, "max_tokens": 120, **fields}


def assert_one_valid_call(calls: list[dict], names=("get_weather", "get_time")):
    [call] = calls
    assert call["type"] == "function" and re.fullmatch("[A-Za-z0-9]{9}", call["id"])
    assert call["function"]["name"] in names
    arguments = json.loads(call["function"]["arguments"])
    assert list(arguments) == ["city"] and arguments["city"] in CITIES


async def test_the_model_reads_calls_in_its_familys_format(family):
    name, worker = family
    assert worker.tool_parsing.name == PARSER_OF[name]


async def test_a_required_call_comes_back_as_tool_calls(family, api_key):
    name, _ = family
    response = await InProcessAPI().post("/v1/chat/completions", body(name), bearer(api_key))
    answer = await response.json()
    assert response.status == 200, answer
    choice = answer["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("tool_calls", None)
    assert_one_valid_call(choice["message"]["tool_calls"])


async def test_a_named_function_is_the_call(family, api_key):
    name, _ = family
    response = await InProcessAPI().post("/v1/chat/completions", body(
        name, tool_choice={"type": "function", "function": {"name": "get_time"}}), bearer(api_key))
    choice = (await response.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert_one_valid_call(choice["message"]["tool_calls"], names=("get_time",))


async def test_a_streamed_required_call_is_streamed_as_tool_calls(family, api_key):
    name, _ = family
    response = await InProcessAPI().post("/v1/chat/completions", body(name, stream=True), bearer(api_key))
    assert response.status == 200
    events = [line[len("data: "):] for line in (await response.body()).decode().splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert content == ""
    deltas = [call for chunk in chunks if chunk["choices"] for call in chunk["choices"][0]["delta"].get("tool_calls", [])]
    first, *rest = deltas
    assert rest and all("id" not in delta and "name" not in delta["function"] for delta in rest)
    assert_one_valid_call([{"id": first["id"], "type": first["type"], "function": {
        "name": first["function"]["name"], "arguments": "".join(delta["function"]["arguments"] for delta in deltas)}}])
    reasons = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert reasons == ["tool_calls"]


async def test_the_responses_api_gives_a_function_call_item(family, api_key):
    name, _ = family
    request = {"model": name, "input": "What is the weather in Paris?", "tools": [
        {"type": "function", **WEATHER["function"]}], "tool_choice": "required", "parallel_tool_calls": False,
        "max_output_tokens": 120}
    response = await InProcessAPI().post("/v1/responses", request, bearer(api_key))
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "completed"
    [item] = answer["output"]
    assert (item["type"], item["name"], json.loads(item["arguments"])["city"] in CITIES) == (
        "function_call", "get_weather", True)
    streamed = await InProcessAPI().post("/v1/responses", {**request, "stream": True}, bearer(api_key))
    events = [json.loads(line[len("data: "):]) for line in (await streamed.body()).decode().splitlines()
              if line.startswith("data: ")]
    assert not [event for event in events if event["type"] == "response.output_text.delta"]
    [done] = [event for event in events if event["type"] == "response.completed"]
    assert [item["type"] for item in done["response"]["output"]] == ["function_call"]
    [streamed_item] = done["response"]["output"]
    assert (streamed_item["name"], json.loads(streamed_item["arguments"])["city"] in CITIES) == ("get_weather", True)


async def test_a_model_whose_calls_are_not_read_refuses_to_require_one(live_db, api_key):
    """tool_parser "none": tools still reach the template, the answer is content, and a
    required call is a 400 naming tool_choice (no grammar in a format it does not read)."""
    from inference.registry import ModelSpec

    with serving([ModelSpec("plain", str(ROOT / "models" / "demo"), max_batch_size=4,
                            model_options=ModelOptions(tool_parser="none"))], default="plain"):
        required = await InProcessAPI().post("/v1/chat/completions", body("plain"), bearer(api_key))
        status, refusal = required.status, await required.json()
        offered = await InProcessAPI().post("/v1/chat/completions", body("plain", tool_choice="auto"), bearer(api_key))
        offered = await offered.json()
    assert status == 400
    assert (refusal["error"]["param"], refusal["error"]["code"]) == ("tool_choice", "invalid_value")
    message = offered["choices"][0]["message"]
    assert "tool_calls" not in message
    assert message["content"].startswith("<tool_call>\n{\"name\": \"get_weather\"")


def test_an_unknown_tool_parser_is_a_load_error_naming_it():
    worker = EngineWorker("demo", str(ROOT / "models" / "demo"), max_batch_size=1,
                          model_options=ModelOptions(tool_parser="hermez"))
    with pytest.raises(ModelLoadError, match="unknown tool_parser 'hermez' \\(one of: auto, none, hermes, llama3_json, "
                                             "mistral, phi4_mini, deepseek\\)"):
        worker.start()
    assert worker.state == "stopped"


def test_an_unknown_tool_parser_in_models_config_names_its_entry(tmp_path):
    from inference.registry import ModelsConfigError, read_models_config

    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nid = "demo"\npath = "{ROOT / "models" / "demo"}"\ntool_parser = "mistral"\n\n'
                      f'[[models]]\nid = "other"\npath = "{ROOT / "models" / "demo"}"\ntool_parser = "qwen"\n')
    with pytest.raises(ModelsConfigError, match="unknown tool_parser 'qwen' \\(one of: auto, none, hermes, "):
        read_models_config(str(config))
    config.write_text(config.read_text().replace('"qwen"', '"hermes"'))
    specs, _ = read_models_config(str(config))
    assert [spec.model_options.tool_parser for spec in specs] == ["mistral", "hermes"]

