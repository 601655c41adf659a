"""Chat templates rendered as Hugging Face renders them (inference.chat_template), checked
against transformers itself on real tokenizers and real chat templates (``.zoo/``, from
``make zoo-sources``): the same text for the same conversation, the same token ids
through /tokenize, and the BOS a text prompt begins with.

The HTTP tests serve folders made of the demo model's ONNX files with a real tokenizer
and template beside them: enough for /tokenize and for every refusal, which come before
generation; the demo network only ever generates from ids its own vocabulary has."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jinja2
import pytest
from inference.chat_template import ChatTemplateLoadError, PromptFormat, template_messages
from tests.asgi import InProcessAPI
from tests.conftest import bearer
from tests.real_tokenizers import hf_tokenizer, prompt_format
from tests.zoo import serving

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / ".zoo"
DEMO = ROOT / "models" / "demo"

# Hermes 3's default template (ChatML); its tool_use template is the zoo's.
HERMES_DEFAULT = ("{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                  "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                  "{{ '<|im_start|>assistant\n' }}{% endif %}")

# family -> (zoo tokenizer, chat template: a zoo file, None for the tokenizer's own, or
# {name: zoo file or source} for a named list in tokenizer_config.json)
FAMILIES = {
    "qwen3": ("qwen3", "Qwen-Qwen3-0.6B.jinja"),
    "qwen2.5": ("qwen3", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwq": ("qwen3", "Qwen-QwQ-32B.jinja"),
    "llama3.1": ("llama3_1", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama3.2": ("llama3_1", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "mistral-nemo": ("llama2", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "gemma-2": ("gemma3", "google-gemma-2-2b-it.jinja"),
    "gemma-3": ("gemma3", None),
    "r1-distill-qwen": ("deepseek_v3", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
    "r1-distill-llama": ("deepseek_v3", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
    "phi-3.5": ("llama2", "microsoft-Phi-3.5-mini-instruct.jinja"),
    "hermes-3": ("llama3_1", {"default": HERMES_DEFAULT, "tool_use": "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"}),
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    }, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER, TIME]


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# Conversations as the API validates them (arguments as JSON text; a tool-call message's
# content null), with the tools offered and chat_template_kwargs.
CONVERSATIONS = {
    "plain": ([{"role": "user", "content": "What is the capital of France?"}], None, {}),
    "system": ([{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}], None, {}),
    "multi_turn": ([{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                    {"role": "user", "content": "And of Italy?"}], None, {}),
    "tools": ([{"role": "system", "content": "You help with travel."},
               {"role": "user", "content": "Weather in Paris?"}], TOOLS, {}),
    "tool_history": ([{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [call("a1B2c3D4e", "get_weather", {"city": "Paris", "unit": "celsius"})]},
                      {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "18 degrees, sunny"}], TOOLS, {}),
    "parallel_calls": ([{"role": "user", "content": "Weather and time in Oslo?"},
                        {"role": "assistant", "content": None,
                         "tool_calls": [call("Xy7Zq2W9e", "get_weather", {"city": "Oslo"}),
                                        call("Pq4Rs6Tu8", "get_time", {"city": "Oslo"})]},
                        {"role": "tool", "tool_call_id": "Xy7Zq2W9e", "content": "2 degrees"},
                        {"role": "tool", "tool_call_id": "Pq4Rs6Tu8", "content": "14:05"}], TOOLS, {}),
    "thinking_history": ([{"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "<think>\nThe user asks about France.\n</think>\n\nParis."},
                          {"role": "user", "content": "And of Italy?"}], None, {"enable_thinking": False}),
    "reasoning_history": ([{"role": "user", "content": "Capital of France?"},
                           {"role": "assistant", "content": "Paris.", "reasoning_content": "France's capital is Paris."},
                           {"role": "user", "content": "And of Italy?"},
                           {"role": "assistant", "content": "Rome.", "reasoning_content": "Italy's is Rome."}], None, {}),
    "multibyte": ([{"role": "user", "content": "東京の天気は？ Ça va, naïve café — 🎉🇫🇷 Ünïcödé"}], None, {}),
}


def zoo_sources_present() -> None:
    assert (ZOO / "tokenizers").is_dir() and (ZOO / "templates").is_dir(), \
        "the real tokenizers and templates are missing: run `make -f Makefile.build zoo-sources`"


def model_folder(where: Path, name: str, tokenizer: str, template, *, onnx: bool = False) -> Path:
    """A folder with a real tokenizer and chat template, as a model has them (``template``
    as in :data:`FAMILIES`); with ``onnx``, also the demo model's network and its
    genai_config.json (whose vocabulary size and special ids the engine checks against
    the network; the server reads the tokenizer's own from its files)."""
    zoo_sources_present()
    folder = where / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ZOO / "tokenizers" / tokenizer / "tokenizer.json", folder)
    config = json.loads((ZOO / "tokenizers" / tokenizer / "tokenizer_config.json").read_text())
    if template is None:  # the tokenizer's own files as they are
        shutil.copy(ZOO / "tokenizers" / tokenizer / "tokenizer_config.json", folder)
    elif isinstance(template, str):
        config.pop("chat_template", None)
        (folder / "chat_template.jinja").write_text((ZOO / "templates" / template).read_text())
    elif isinstance(template, dict):
        config["chat_template"] = [
            {"name": name, "template": (ZOO / "templates" / source).read_text() if source.endswith(".jinja") else source}
            for name, source in template.items()]
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    if onnx:
        for name in ("genai_config.json", "model.onnx", "model.onnx.data"):
            (folder / name).symlink_to(DEMO / name)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    where = tmp_path_factory.mktemp("templates")
    return {family: model_folder(where, family, *FAMILIES[family]) for family in FAMILIES}


def hf_render(folder: Path, messages, tools, kwargs, *, tokenize=False):
    hf = hf_tokenizer(folder)
    return hf.apply_chat_template(template_messages(messages), tools=tools, add_generation_prompt=True,
                                  tokenize=tokenize, return_dict=False, **kwargs)


def outcome(render):
    """What a render gave: ("text", text), or ("raises", exception type, message)."""
    try:
        return ("text", render())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return ("raises", type(exc).__name__, str(exc))


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_conversation_renders_and_encodes_as_transformers_does(folders, family, conversation):
    messages, tools, kwargs = CONVERSATIONS[conversation]
    prompt = prompt_format(folders[family], family)
    ours = outcome(lambda: prompt.chat_template.render(template_messages(messages), tools=tools, template_kwargs=kwargs))
    theirs = outcome(lambda: hf_render(folders[family], messages, tools, kwargs))
    assert ours == theirs
    if ours[0] == "text":
        assert prompt.encode(ours[1]) == hf_render(folders[family], messages, tools, kwargs, tokenize=True)


def test_the_templates_render_what_each_conversation_is_about(folders):
    """The comparisons above compare real renderings: spot checks of what they hold."""
    def ours(family, conversation):
        messages, tools, kwargs = CONVERSATIONS[conversation]
        return prompt_format(folders[family], family).chat_template.render(
            template_messages(messages), tools=tools, template_kwargs=kwargs)

    # Llama 3.1 keeps the whole schema of a tool (enum, nested objects, required),
    # written by tojson with indent=4.
    llama = ours("llama3.1", "tools")
    assert '"enum": [\n                        "celsius",\n                        "fahrenheit"\n' in llama
    assert '"lat": {\n                            "type": "number"' in llama
    assert '"required": [\n                "city"\n            ]' in llama
    # Qwen3 drops the reasoning of earlier turns, and opens an empty one without thinking.
    thinking = ours("qwen3", "thinking_history")
    assert "The user asks about France" not in thinking and "Paris." in thinking
    assert thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A message's reasoning_content reaches the template: Qwen3 keeps the last turn's.
    reasoning = ours("qwen3", "reasoning_history")
    assert "<think>\nItaly's is Rome.\n</think>\n\nRome." in reasoning and "France's capital" not in reasoning
    # Parallel calls and their results, in order; multibyte text as it is.
    parallel = ours("qwen2.5", "parallel_calls")
    assert parallel.index('"get_weather"') < parallel.index('"get_time"') < parallel.index("2 degrees") < parallel.index("14:05")
    assert "東京の天気は？ Ça va, naïve café — 🎉🇫🇷 Ünïcödé" in ours("gemma-3", "multibyte")
    # Mistral: the 9-character ids are written back.
    assert '"id": "a1B2c3D4e"' in ours("mistral-nemo", "tool_history")


def test_what_transformers_refuses_is_refused_with_its_own_message(folders):
    def raised(family, conversation):
        messages, tools, kwargs = CONVERSATIONS[conversation]
        with pytest.raises(jinja2.TemplateError) as info:
            prompt_format(folders[family], family).chat_template.render(
                template_messages(messages), tools=tools, template_kwargs=kwargs)
        return str(info.value)

    assert raised("gemma-2", "system") == "System role not supported"
    assert raised("llama3.1", "parallel_calls") == "This model only supports single tool-calls at once!"


def test_the_tool_use_template_is_chosen_when_tools_are_given(folders):
    template = prompt_format(folders["hermes-3"], "hermes-3").chat_template
    assert set(template.sources) == {"default", "tool_use"}
    plain = template.render([{"role": "user", "content": "Hi"}])
    assert plain == "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with_tools = template.render([{"role": "user", "content": "Hi"}], tools=TOOLS)
    assert "<tools>" in with_tools and '"get_weather"' in with_tools


def test_special_tokens_are_those_transformers_gives_a_template(folders):
    for family, folder in folders.items():
        template = prompt_format(folder, family).chat_template
        assert template.special_tokens.items() <= hf_tokenizer(folder).special_tokens_map.items(), family
    # An AddedToken object in tokenizer_config.json is its content.
    r1 = prompt_format(folders["r1-distill-qwen"], "r1-distill-qwen").chat_template
    assert r1.special_tokens["bos_token"] == "<｜begin▁of▁sentence｜>"


def test_a_chat_template_jinja_file_wins_over_tokenizer_config_and_an_override_over_both(tmp_path):
    folder = model_folder(tmp_path, "gemma-3", *FAMILIES["gemma-3"])  # the template in tokenizer_config.json
    assert PromptFormat.load("m", folder).chat_template.render([{"role": "user", "content": "Hi"}]).startswith(
        "<bos><start_of_turn>user\nHi")
    (folder / "chat_template.jinja").write_text("file:{{ messages[0].content }}")
    assert PromptFormat.load("m", folder).chat_template.render([{"role": "user", "content": "Hi"}]) == "file:Hi"
    (folder / "mine.jinja").write_text("mine:{{ bos_token }}{{ messages[0].content }}")
    assert PromptFormat.load("m", folder, "mine.jinja").chat_template.render(
        [{"role": "user", "content": "Hi"}]) == "mine:<bos>Hi"
    assert PromptFormat.load("m", folder, str(folder / "mine.jinja")).chat_template.origin == str(folder / "mine.jinja")


def test_a_template_that_cannot_be_read_or_compiled_stops_the_load(tmp_path):
    folder = model_folder(tmp_path, "qwen3", *FAMILIES["qwen3"])
    with pytest.raises(ChatTemplateLoadError, match=r"cannot read the chat_template .*missing\.jinja"):
        PromptFormat.load("m", folder, "missing.jinja")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}")
    with pytest.raises(ChatTemplateLoadError, match=r"is not valid Jinja: Unexpected end of template.*\(line 1\)"):
        PromptFormat.load("m", folder)


def test_the_probe_finds_what_a_template_drops_and_logs_it_once(folders, caplog):
    expected = {
        "qwen3": set(), "qwen2.5": set(), "qwq": set(), "llama3.1": set(), "llama3.2": set(), "mistral-nemo": set(),
        "hermes-3": set(),
        "gemma-2": {"tools", "tool_calls"},  # system messages and tool results raise instead
        "gemma-3": {"tools", "tool_calls"},
        "r1-distill-qwen": {"tools"},
        "r1-distill-llama": {"tools", "tool_calls"},  # its calls need a content of None and text arguments
        "phi-3.5": {"tools", "tool_calls", "tool_results"},
    }
    found = {family: set(prompt_format(folder, family).chat_template.drops) for family, folder in folders.items()}
    assert found == expected
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmserver.chat_template"):
        PromptFormat.load("phi", folders["phi-3.5"])
    [record] = caplog.records
    assert record.getMessage() == (
        f"model phi: its chat template ({folders['phi-3.5'] / 'chat_template.jinja'}) tools: does not show the "
        "offered tools to the model; tool_calls: drops the tool calls of assistant messages; tool_results: drops "
        "tool results (messages with role 'tool'); requests that need what it drops are refused")


@pytest.mark.parametrize("tokenizer", ["qwen3", "llama3_1", "gemma3", "llama2", "deepseek_v3"])
def test_a_text_prompt_begins_with_the_bos_the_tokenizer_adds(tmp_path, tokenizer):
    zoo_sources_present()
    folder = ZOO / "tokenizers" / tokenizer
    hf = hf_tokenizer(folder)
    text = "Once upon a time, in Zürich"
    plain = hf(text, add_special_tokens=False).input_ids
    expected = hf(text).input_ids
    if tokenizer == "deepseek_v3":
        # tokenizer_config.json asks for BOS (add_bos_token, as transformers 4's
        # LlamaTokenizerFast honours it); transformers 5 loads this ByteLevel tokenizer.json
        # as a generic tokenizer whose post_processor adds nothing, and ignores the flag.
        assert expected == plain
        expected = [hf.bos_token_id, *plain]
    loaded = prompt_format(folder)
    assert loaded.encode(text) == plain
    assert loaded.encode(text, bos=True) == expected
    assert loaded.bos_id == {"qwen3": None, "llama3_1": 128000, "gemma3": 2, "llama2": 1, "deepseek_v3": 0}[tokenizer]


def test_the_demo_model_renders_as_its_training_data_does():
    from demomodel.corpus import render_chatml

    messages, tools, _ = CONVERSATIONS["parallel_calls"]
    shaped = template_messages(messages)
    rendered = PromptFormat.load("demo", DEMO).chat_template.render(shaped, tools=tools)
    assert rendered == render_chatml(shaped, add_generation_prompt=True, tools=tools)
    assert PromptFormat.load("demo", DEMO).bos_id is None


# --- through the API -------------------------------------------------------------------------

# Served in-process: name -> (tokenizer, template). gemma-2's template is served on the
# llama2 tokenizer, whose ids for the text the engine's start-up measures fit the demo
# network (gemma's do not); its refusals do not depend on the tokenizer. The llama2
# tokenizer ships no chat template.
SERVED = {
    "qwen3": FAMILIES["qwen3"], "llama3.1": FAMILIES["llama3.1"], "mistral-nemo": FAMILIES["mistral-nemo"],
    "phi-3.5": FAMILIES["phi-3.5"], "gemma-2": ("llama2", FAMILIES["gemma-2"][1]), "plain-llama2": ("llama2", None),
}


@pytest.fixture(scope="module")
def served(live_db, tmp_path_factory):
    """The models of :data:`SERVED` in this process's registry, each a folder with the
    demo network and a real tokenizer and template."""
    from inference.model_options import ModelOptions
    from inference.registry import ModelSpec

    where = tmp_path_factory.mktemp("served")
    folders = {name: model_folder(where, name, *source, onnx=True) for name, source in SERVED.items()}
    specs = [ModelSpec(name, str(folder), max_batch_size=2) for name, folder in folders.items()]
    # The per-model option: a template file beside the model replaces its own.
    folders["overridden"] = model_folder(where, "overridden", *FAMILIES["qwen3"], onnx=True)
    (folders["overridden"] / "plain.jinja").write_text(OVERRIDE)
    specs.append(ModelSpec("overridden", str(folders["overridden"]), max_batch_size=2,
                           model_options=ModelOptions(chat_template="plain.jinja")))
    with serving(specs, default="qwen3"):
        yield folders


OVERRIDE = "{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}{{ eos_token }}"


async def test_a_models_chat_template_option_replaces_its_template(served, api_key):
    status, counted = await post(api_key, "/tokenize", {"model": "overridden", "messages": CONVERSATIONS["system"][0]})
    assert status == 200, counted
    text = "<|im_start|>system: You are terse.<|im_end|><|im_start|>user: What is the capital of France?<|im_end|><|im_end|>"
    assert counted["tokens"] == hf_tokenizer(served["overridden"])(text, add_special_tokens=False).input_ids
    assert counted["tokens"][-2:] == [151645, 151645]  # <|im_end|> from the text and from eos_token


async def post(api_key, path, body):
    response = await InProcessAPI().post(path, body, bearer(api_key))
    return response.status, await response.json()


@pytest.mark.parametrize("family, conversation", [
    ("qwen3", "tools"), ("qwen3", "tool_history"), ("qwen3", "thinking_history"), ("qwen3", "multibyte"),
    ("llama3.1", "system"), ("llama3.1", "tools"), ("llama3.1", "tool_history"),
    ("mistral-nemo", "tools"), ("mistral-nemo", "parallel_calls"),
])
async def test_tokenize_counts_the_ids_transformers_gives(served, api_key, family, conversation):
    messages, tools, kwargs = CONVERSATIONS[conversation]
    body = {"model": family, "messages": messages}
    if tools:
        body["tools"] = tools
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    status, counted = await post(api_key, "/tokenize", body)
    assert status == 200, counted
    assert counted["tokens"] == hf_render(served[family], messages, tools, kwargs, tokenize=True)


async def test_chat_template_kwargs_reach_the_template(served, api_key):
    messages = CONVERSATIONS["plain"][0]
    _, thinking = await post(api_key, "/tokenize", {"model": "qwen3", "messages": messages})
    _, not_thinking = await post(api_key, "/tokenize", {"model": "qwen3", "messages": messages,
                                                        "chat_template_kwargs": {"enable_thinking": False}})
    assert thinking["tokens"] == hf_render(served["qwen3"], messages, None, {}, tokenize=True)
    assert not_thinking["tokens"] == hf_render(served["qwen3"], messages, None, {"enable_thinking": False}, tokenize=True)
    assert not_thinking["count"] == thinking["count"] + 4  # "<think>\n\n</think>\n\n"


@pytest.mark.parametrize("family, prompt", [("llama3.1", "Once upon a time"), ("qwen3", "Once upon a time")])
async def test_tokenize_a_prompt_as_the_tokenizer_does(served, api_key, family, prompt):
    hf = hf_tokenizer(served[family])
    _, counted = await post(api_key, "/tokenize", {"model": family, "prompt": prompt})
    assert counted["tokens"] == hf(prompt).input_ids
    _, bare = await post(api_key, "/tokenize", {"model": family, "prompt": prompt, "add_special_tokens": False})
    assert bare["tokens"] == hf(prompt, add_special_tokens=False).input_ids


async def test_a_completion_prompt_begins_with_bos_and_a_model_without_a_template_refuses_chats(served, api_key):
    hf = hf_tokenizer(served["plain-llama2"])
    prompt = "and then"  # ids the demo network has (below 2048), BOS included
    assert max(hf(prompt).input_ids) < 2048 and hf(prompt).input_ids[0] == hf.bos_token_id == 1
    status, completion = await post(api_key, "/v1/completions", {"model": "plain-llama2", "prompt": prompt, "max_tokens": 1})
    assert status == 200, completion
    assert completion["usage"]["prompt_tokens"] == len(hf(prompt).input_ids)
    status, refused = await post(api_key, "/v1/chat/completions",
                                 {"model": "plain-llama2", "messages": CONVERSATIONS["plain"][0]})
    assert (status, refused) == (400, {"error": {
        "message": "The model 'plain-llama2' has no chat template, so it cannot take chat messages. Send a prompt to "
                   "/v1/completions, or serve the model with a chat_template.",
        "type": "invalid_request_error", "param": "messages", "code": "chat_template_missing"}})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("model, messages, tools, message", [
    ("gemma-2", CONVERSATIONS["system"][0], None,
     "The chat template of model 'gemma-2' cannot render these messages: System role not supported"),
    ("mistral-nemo", [{"role": "user", "content": "Weather?"},
                      {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", {"city": "Oslo"})]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "2 degrees"}], TOOLS,
     "The chat template of model 'mistral-nemo' cannot render these messages: "
     "Tool call IDs should be alphanumeric strings with length 9!"),
])
async def test_a_template_that_raises_is_a_400_quoting_it(served, api_key, path, model, messages, tools, message):
    body = {"model": model, "messages": messages, **({"tools": tools} if tools else {})}
    status, refused = await post(api_key, path, body)
    assert (status, refused) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                                 "param": "messages", "code": "chat_template_error"}})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("messages, tools, param, what", [
    (CONVERSATIONS["plain"][0], TOOLS, "tools", "does not show the offered tools to the model"),
    (CONVERSATIONS["tool_history"][0], None, "messages", "drops the tool calls of assistant messages"),
    ([{"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "18"}], None,
     "messages", "drops tool results (messages with role 'tool')"),
])
async def test_what_the_template_drops_is_refused_naming_the_parameter(served, api_key, path, messages, tools, param, what):
    body = {"model": "phi-3.5", "messages": messages, **({"tools": tools} if tools else {})}
    status, refused = await post(api_key, path, body)
    assert (status, refused) == (400, {"error": {
        "message": f"The chat template of model 'phi-3.5' {what}, so this request cannot be shown to the model as sent. "
                   "Leave it out, or serve the model with a chat_template that renders it.",
        "type": "invalid_request_error", "param": param, "code": "chat_template_unsupported"}})


async def test_what_the_template_renders_is_not_refused(served, api_key):
    """phi-3.5 keeps system messages; gemma-2 drops tools, but with tool_choice "none" no
    tools reach the template: that request is rendered, and then refused only for its
    length (which keeps the demo network from generating on this tokenizer's ids)."""
    status, counted = await post(api_key, "/tokenize", {"model": "phi-3.5", "messages": CONVERSATIONS["system"][0]})
    assert status == 200
    assert counted["tokens"] == hf_render(served["phi-3.5"], CONVERSATIONS["system"][0], None, {}, tokenize=True)
    status, body = await post(api_key, "/v1/chat/completions", {
        "model": "gemma-2", "messages": [{"role": "user", "content": "Hi " * 600}], "tools": TOOLS,
        "tool_choice": "none", "chat_template_kwargs": {"unused": 1}})
    assert (status, body["error"]["code"]) == (400, "context_length_exceeded")


@pytest.mark.parametrize("kwargs, message", [
    ({"messages": []}, "Invalid value for 'chat_template_kwargs': 'messages' is a variable the server sets for the "
                       "chat template."),
    ({"enable_thinking": False, "bos_token": "<s>"},
     "Invalid value for 'chat_template_kwargs': 'bos_token' is a variable the server sets for the chat template."),
    ({"add_generation_prompt": False}, "Invalid value for 'chat_template_kwargs': 'add_generation_prompt' is a "
                                       "variable the server sets for the chat template."),
    ("enable_thinking", 'Invalid value for \'chat_template_kwargs\': Expected a dictionary of items but got type "str".'),
])
async def test_chat_template_kwargs_that_would_replace_the_servers_variables_are_refused(served, api_key, kwargs, message):
    for path in ("/v1/chat/completions", "/tokenize"):
        status, refused = await post(api_key, path, {"model": "qwen3", "messages": CONVERSATIONS["plain"][0],
                                                     "chat_template_kwargs": kwargs})
        assert status == 400
        assert (refused["error"]["param"], refused["error"]["message"]) == ("chat_template_kwargs", message)
