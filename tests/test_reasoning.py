"""Reasoning models: the <think> block separated from the answer (inference/reasoning.py),
by parsers tested on exact strings, by the real engine's turns, and through the API."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from demomodel.corpus import CHAT_TEMPLATE, repeat_prompt
from inference.chat_template import template_text
from inference.reasoning import ReasoningSplitter, detect_parser, resolve_parser, split_whole, splitter_for
from tests.asgi import InProcessAPI
from tests.conftest import DEMO_MODEL, ROOT, bearer, serving

# (output, begins inside the block, reasoning, content)
CASES = [
    # Qwen3 with thinking on: the model opens the block itself.
    ("<think>\nThe user greets me.\n</think>\n\nHello!", False, "The user greets me.", "Hello!"),
    # No block at all: an answer (Qwen3 whose output does not open one).
    ("Hello! <think> is a tag.", False, "", "Hello! <think> is a tag."),
    ("  Hello", False, "", "  Hello"),
    ("<thinking>x</thinking>", False, "", "<thinking>x</thinking>"),
    # Cut off while thinking: all of it is reasoning; a partial tag is text.
    ("<think>\nLet me count: 1, 2, 3 </thi", False, "Let me count: 1, 2, 3 </thi", ""),
    ("<think>", False, "", ""),
    # DeepSeek-R1 / QwQ: the prompt opened the block.
    ("Okay, 2 + 2 is 4.\n</think>\n\nThe answer is 4.", True, "Okay, 2 + 2 is 4.", "The answer is 4."),
    ("<think>\nwritten again\n</think>answer", True, "written again", "answer"),
    ("never closed < / think", True, "never closed < / think", ""),
    ("</think>only an answer", True, "", "only an answer"),
    ("a</think>b</think>c <think>d", True, "a", "b</think>c <think>d"),
    # Text after the answer's first character is never reasoning.
    ("<think>a</think>\n\n \n", False, "a", ""),
    ("", True, "", ""),
]


def chunked(text: str, size: int) -> list[str]:
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


def expected_reasoning_tokens(pieces: list[str], in_reasoning: bool) -> int:
    """The pieces (one token each) up to and including the one that completes </think>;
    all of them if the block never closes; none if the output never opened one."""
    text = "".join(pieces)
    opened = in_reasoning or text.lstrip().startswith("<think>")
    if not opened:
        return 0
    if "</think>" not in text:
        return len(pieces)
    end = text.index("</think>") + len("</think>")
    consumed = 0
    for count, piece in enumerate(pieces, 1):
        consumed += len(piece)
        if consumed >= end:
            return count
    raise AssertionError("unreachable")


def feed_all(pieces: list[str], in_reasoning: bool) -> tuple[str, str, int, list[tuple[str, str]]]:
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    out = [splitter.feed(piece) for piece in pieces]
    out.append(splitter.finish())
    return "".join(r for r, _ in out), "".join(c for _, c in out), splitter.reasoning_tokens, out


@pytest.mark.parametrize("output, in_reasoning, reasoning, content", CASES)
def test_a_whole_output_splits_into_reasoning_and_content(output, in_reasoning, reasoning, content):
    assert split_whole(output, in_reasoning=in_reasoning) == (reasoning, content)


@pytest.mark.parametrize("output, in_reasoning, reasoning, content", CASES)
@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_chunking_gives_the_same_split_and_counts_the_tokens_to_the_end_tag(
        output, in_reasoning, reasoning, content, size):
    for offset in range(size):  # the first piece shorter, shifting every boundary
        pieces = ([output[:offset]] if offset else []) + chunked(output[offset:], size)
        got_reasoning, got_content, tokens, out = feed_all(pieces, in_reasoning)
        assert (got_reasoning, got_content) == (reasoning, content), pieces
        assert tokens == expected_reasoning_tokens(pieces, in_reasoning), pieces
        # Reasoning always comes first: once content has been given out, no more reasoning.
        first_content = next((i for i, (_, c) in enumerate(out) if c), len(out))
        assert not any(r for r, _ in out[first_content + 1:]), pieces


def test_a_piece_holding_the_end_tag_and_the_answer_counts_as_reasoning():
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.feed("thinking", 1) == ("thinking", "")
    assert splitter.feed(" hard</think>\n\nYes", 1) == (" hard", "Yes")
    assert splitter.feed(" indeed", 1) == ("", " indeed")
    assert splitter.finish() == ("", "")
    assert splitter.reasoning_tokens == 2
    assert splitter.reasoning_ended


def test_empty_pieces_of_an_incomplete_character_count_where_they_fall():
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.feed("", 1) == ("", "")  # the first byte of a character
    assert splitter.feed("é</think>", 1) == ("é", "")
    assert splitter.feed("", 1) == ("", "")
    assert splitter.feed("ü", 1) == ("", "ü")
    assert splitter.reasoning_tokens == 2


def test_an_undecided_opening_counts_its_tokens_only_if_it_opens_a_block():
    opened = ReasoningSplitter(in_reasoning=False)
    assert [opened.feed(piece) for piece in ("\n", "<th", "ink>", "hm", "</think>", "ok")] == [
        ("", ""), ("", ""), ("", ""), ("hm", ""), ("", ""), ("", "ok")]
    assert opened.reasoning_tokens == 5
    plain = ReasoningSplitter(in_reasoning=False)
    assert [plain.feed(piece) for piece in ("\n", "<th", "is>")] == [("", ""), ("", ""), ("", "\n<this>")]
    assert plain.reasoning_tokens == 0


def test_the_prompt_decides_where_the_output_begins():
    assert splitter_for(None, "<|im_start|>assistant\n<think>\n") is None
    # enable_thinking=false: the template closed the block in the prompt.
    assert splitter_for("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n") is None
    assert splitter_for("deepseek_r1", "<｜Assistant｜><think>\n</think>") is None
    assert splitter_for("qwen3", "<|im_start|>assistant\n<think>\n").in_reasoning  # QwQ, Qwen3.5
    assert not splitter_for("qwen3", "<|im_start|>assistant\n").in_reasoning  # Qwen3
    assert splitter_for("deepseek_r1", "<｜Assistant｜>").in_reasoning


ZOO_TEMPLATES = ROOT / ".zoo" / "templates"


@pytest.mark.parametrize("template, parser", [
    ("Qwen-Qwen3-0.6B.jinja", "qwen3"),
    ("Qwen-QwQ-32B.jinja", "deepseek_r1"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek_r1"),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek_r1"),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", None),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", None),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", None),
    ("microsoft-Phi-3.5-mini-instruct.jinja", None),
])
def test_auto_reads_the_parser_off_real_chat_templates(template, parser):
    if not ZOO_TEMPLATES.is_dir():  # make test fetches them: missing, they are a failure, not a skip
        pytest.fail(f"no real chat templates in {ZOO_TEMPLATES}: run `make zoo-sources`")
    assert detect_parser((ZOO_TEMPLATES / template).read_text()) == parser


def test_the_option_names_a_parser_or_none_or_auto():
    assert detect_parser(CHAT_TEMPLATE) is None  # the demo model's
    assert resolve_parser("auto", CHAT_TEMPLATE) is None
    assert resolve_parser("qwen3", CHAT_TEMPLATE) == "qwen3"
    assert resolve_parser("none", R1_TEMPLATE) is None
    assert resolve_parser("auto", R1_TEMPLATE) == "deepseek_r1"
    assert resolve_parser("auto", QWEN3_TEMPLATE) == "qwen3"
    with pytest.raises(ValueError, match="unknown reasoning parser 'deepseek'; known: auto, none, deepseek_r1, qwen3"):
        resolve_parser("deepseek", CHAT_TEMPLATE)


def test_the_parsers_read_the_jinja_file_else_the_tokenizer_configs_templates(tmp_path):
    assert template_text(tmp_path) == ""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert template_text(tmp_path) == "T\nD"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "C"}))
    assert template_text(tmp_path) == "C"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert template_text(tmp_path) == "J"
    (tmp_path / "override.jinja").write_text("O")
    assert template_text(tmp_path, "override.jinja") == "O"


# --- demo-model copies whose chat templates make them reasoning models ---------------------

# The demo model's template (tools and all), with the generation prompt opening the block
# as DeepSeek-R1's and QwQ's do.
R1_TEMPLATE = CHAT_TEMPLATE.replace("{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                                    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
assert R1_TEMPLATE != CHAT_TEMPLATE
# An assistant's history kept to its answer.
_HISTORY = "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
# As Qwen3's: the model opens the block itself, the generation prompt does not; an
# assistant's reasoning given back is written back in its block.
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _HISTORY +
    "{% if message['reasoning_content'] %}<think>{{ message['reasoning_content'] }}</think>{% endif %}"
    "{{ content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def demo_copy(folder: Path, template: str) -> Path:
    """The demo model's weights, with another chat template."""
    folder.mkdir()
    for file in DEMO_MODEL.iterdir():
        if file.name != "tokenizer_config.json":
            os.symlink(file, folder / file.name)
    config = json.loads((DEMO_MODEL / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


@pytest.fixture(scope="module")
def reasoning_models(tmp_path_factory, live_db):
    """The demo model served in-process under three ids: as itself, with an R1-style
    template and with a Qwen3-style one (parsers chosen by "auto")."""
    from inference.model_options import ModelOptions
    from inference.registry import ModelSpec, registry

    base = tmp_path_factory.mktemp("reasoning")
    specs = [
        ModelSpec("demo", str(DEMO_MODEL), max_batch_size=4, preload=True),
        ModelSpec("r1", str(demo_copy(base / "r1", R1_TEMPLATE)), max_batch_size=4, preload=True),
        ModelSpec("qwen3", str(demo_copy(base / "qwen3", QWEN3_TEMPLATE)), max_batch_size=4, preload=True),
        ModelSpec("r1-off", str(base / "r1"), max_batch_size=4, preload=True,
                  model_options=ModelOptions(reasoning_parser="none")),
    ]
    with serving(specs, default="demo"):
        yield {slot.spec.id: slot for slot in registry.slots()}
    shutil.rmtree(base)


def test_auto_chose_each_copys_parser(reasoning_models):
    assert {name: slot.worker.reasoning_parser for name, slot in reasoning_models.items()} == {
        "demo": None, "r1": "deepseek_r1", "qwen3": "qwen3", "r1-off": None}


# --- the engine's own turns, split -----------------------------------------------------------


def token_texts(worker, tokens: list[int]) -> list[str]:
    """Each generated token's text, decoded apart from the server's stream."""
    stream = worker.tokenizer.create_stream()
    return [stream.decode(token) for token in tokens]


async def forced_generation(worker, output: str, *, in_reasoning: bool, stop=None):
    """A Generation of the real engine whose output a grammar fixes to ``output``."""
    from inference.engine import SamplingParams
    from inference.generation import Generation
    from inference.serving import chat_prompt

    prompt = worker.prompt_format.encode(chat_prompt(worker, [{"role": "user", "content": "Think, then answer."}]))
    params = SamplingParams(max_tokens=64, guidance=("lark_grammar", f"start: {json.dumps(output)}"))
    generation = Generation(worker, [prompt], params, stop=stop,
                            reasoning=lambda: ReasoningSplitter(in_reasoning=in_reasoning))
    generation.hold_places()
    try:
        updates = [update async for update in generation.updates()]
    finally:
        generation.release_places()
    return generation, updates


async def test_the_engines_tokens_split_at_the_end_tag_and_count_up_to_it(reasoning_models):
    worker = reasoning_models["demo"].worker
    generation, updates = await forced_generation(worker, "tiger lemon\n</think>\n\nlemon tiger", in_reasoning=True)
    assert "".join(update.reasoning for update in updates) == "tiger lemon"
    assert "".join(update.text for update in updates) == "lemon tiger"
    assert updates[-1].finish_reason == "stop"
    texts = token_texts(worker, generation.turns[0]._generated)
    assert "".join(texts) == "tiger lemon\n</think>\n\nlemon tiger"
    ends_at = expected_reasoning_tokens(texts, True)
    assert 0 < ends_at < len(texts)
    usage = generation.usage()
    assert usage["completion_tokens"] == len(texts)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": ends_at}
    # Each update's reasoning comes before its content, and no reasoning after content.
    seen_content = False
    for update in updates:
        assert not (seen_content and update.reasoning)
        seen_content = seen_content or bool(update.text)


async def test_stop_sequences_apply_to_the_content_alone(reasoning_models):
    worker = reasoning_models["demo"].worker
    generation, updates = await forced_generation(worker, "<think>red tiger</think>lemon tiger peach",
                                                  in_reasoning=False, stop=["tiger"])
    assert "".join(update.reasoning for update in updates) == "red tiger"
    assert "".join(update.text for update in updates) == "lemon "
    assert updates[-1].finish_reason == "stop"


async def test_an_output_that_opens_no_block_is_all_content_and_no_reasoning(reasoning_models):
    worker = reasoning_models["demo"].worker
    generation, updates = await forced_generation(worker, "lemon <think>tiger</think>", in_reasoning=False)
    assert "".join(update.text for update in updates) == "lemon <think>tiger</think>"
    assert not any(update.reasoning for update in updates)
    assert generation.usage()["completion_tokens_details"] == {"reasoning_tokens": 0}


# --- through the API ----------------------------------------------------------------------------


async def post(api_key, path, body):
    response = await InProcessAPI().post(path, body, bearer(api_key))
    assert response.status == 200, await response.body()
    return response


async def chat(api_key, model, content, **fields):
    response = await post(api_key, "/v1/chat/completions",
                          {"model": model, "messages": [{"role": "user", "content": content}], **fields})
    return await response.json()


async def streamed(api_key, path, body) -> list:
    response = await post(api_key, path, {**body, "stream": True})
    events = [part.removeprefix("data: ") for part in (await response.body()).decode().split("\n\n") if part]
    if path == "/v1/chat/completions":
        assert events[-1] == "[DONE]"
        events = events[:-1]
    return [json.loads(event.split("\n")[-1].removeprefix("data: ")) for event in events]


async def raw_completion(api_key, model, content, max_tokens, tools=None):
    """What the model writes after the chat prompt, with no reasoning parsed (plain text
    completions never parse it): the oracle of the split."""
    tokenize = await post(api_key, "/tokenize", {"model": model, "messages": [{"role": "user", "content": content}],
                                                 **({"tools": tools} if tools else {})})
    body = await (await post(api_key, "/v1/completions", {"model": model, "prompt": (await tokenize.json())["tokens"],
                                                          "max_tokens": max_tokens})).json()
    return body["choices"][0]["text"], body["usage"]["completion_tokens"]


async def test_an_r1_style_answer_is_all_reasoning_until_the_end_tag_counted_by_token(reasoning_models, api_key):
    prompt = repeat_prompt("tiger lemon")
    written, tokens = await raw_completion(api_key, "r1", prompt, 64)
    assert written == "lemon tiger"  # what the demo model writes after "<think>\n", then its end
    body = await chat(api_key, "r1", prompt)
    assert body["choices"] == [{"index": 0, "message": {
        "role": "assistant", "content": "", "refusal": None, "reasoning_content": "lemon tiger"},
        "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["completion_tokens"] == tokens
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": tokens}

    chunks = await streamed(api_key, "/v1/chat/completions", {
        "model": "r1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
        "stream_options": {"include_usage": True}})
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "lemon"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}


async def test_the_r1_templates_model_answers_with_parsing_switched_off(reasoning_models, api_key):
    prompt = repeat_prompt("tiger lemon")
    written, _ = await raw_completion(api_key, "r1-off", prompt, 64)
    body = await chat(api_key, "r1-off", prompt)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": written, "refusal": None}
    assert "completion_tokens_details" not in body["usage"]


async def test_a_qwen3_style_answer_that_opens_no_block_is_content(reasoning_models, api_key):
    body = await chat(api_key, "qwen3", repeat_prompt("tiger lemon"))
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": "tiger lemon", "refusal": None, "reasoning_content": None}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_the_demo_model_answers_as_before_with_no_reasoning_fields(reasoning_models, api_key):
    body = await chat(api_key, "demo", repeat_prompt("tiger lemon"))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "tiger lemon", "refusal": None}
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_a_tool_call_written_while_thinking_is_not_a_call(reasoning_models, api_key):
    written, _ = await raw_completion(api_key, "r1", "What is the weather in Paris?", 60, tools=[TOOL])
    assert "<tool_call>" in written and "</think>" not in written  # the demo model calls, inside the block
    body = await chat(api_key, "r1", "What is the weather in Paris?", tools=[TOOL])
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "", "refusal": None,
                                 "reasoning_content": written.strip()}
    assert choice["finish_reason"] == "stop"


async def test_what_a_grammar_makes_a_reasoning_model_write_is_the_answer(reasoning_models, api_key):
    required = await chat(api_key, "r1", "What is the weather in Paris?", tools=[TOOL], tool_choice="required")
    [choice] = required["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert [call["function"]["name"] for call in choice["message"]["tool_calls"]] == ["get_weather"]
    assert choice["message"]["reasoning_content"] is None
    assert required["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}

    schema = {"type": "object", "properties": {"word": {"type": "string", "enum": ["tiger", "lemon"]}},
              "required": ["word"], "additionalProperties": False}
    shaped = await chat(api_key, "r1", repeat_prompt("tiger"), response_format={
        "type": "json_schema", "json_schema": {"name": "word", "schema": schema}})
    message = shaped["choices"][0]["message"]
    assert json.loads(message["content"]) in ({"word": "tiger"}, {"word": "lemon"})
    assert message["reasoning_content"] is None
    assert shaped["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_a_response_has_a_reasoning_item_before_its_message(reasoning_models, api_key):
    prompt = repeat_prompt("tiger lemon")
    written, tokens = await raw_completion(api_key, "r1", prompt, 64)
    body = await (await post(api_key, "/v1/responses", {"model": "r1", "input": prompt})).json()
    reasoning, message = body["output"]
    assert reasoning["id"].startswith("rs_")
    assert reasoning == {"type": "reasoning", "id": reasoning["id"], "summary": [],
                         "content": [{"type": "reasoning_text", "text": "lemon tiger"}], "status": "completed"}
    assert (message["type"], message["content"][0]["text"], body["status"]) == ("message", "", "completed")
    assert body["usage"]["output_tokens"] == tokens
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": tokens}

    events = await streamed(api_key, "/v1/responses", {"model": "r1", "input": prompt, "max_output_tokens": 1})
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    item_id = events[2]["item"]["id"]
    assert events[2]["item"] == {"type": "reasoning", "id": item_id, "summary": [], "content": [], "status": "in_progress"}
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    assert {key: events[4][key] for key in ("item_id", "output_index", "content_index", "delta")} == {
        "item_id": item_id, "output_index": 0, "content_index": 0, "delta": "lemon"}
    assert events[5]["text"] == "lemon"
    done = events[-1]["response"]
    assert [item["type"] for item in done["output"]] == ["reasoning", "message"]
    assert done["output"][0]["content"] == [{"type": "reasoning_text", "text": "lemon"}]
    assert done["usage"]["output_tokens_details"] == {"reasoning_tokens": 1}


async def test_a_reasoning_model_gets_the_larger_default_of_max_tokens(reasoning_models, settings):
    from inference.serving import ChatServing

    data = {"messages": [{"role": "user", "content": "hi"}], "n": 1}
    settings.DEFAULT_REASONING_MAX_TOKENS = 300
    r1, demo = reasoning_models["r1"].worker, reasoning_models["demo"].worker
    assert ChatServing(r1, "r1").generation(dict(data)).turns[0].params.max_tokens == 300
    assert ChatServing(demo, "demo").generation(dict(data)).turns[0].params.max_tokens == settings.DEFAULT_MAX_TOKENS
    settings.DEFAULT_REASONING_MAX_TOKENS = 4096  # bounded by the context
    assert ChatServing(r1, "r1").generation(dict(data)).turns[0].params.max_tokens == r1.context_length == 512
    assert ChatServing(r1, "r1").generation({**data, "max_tokens": 7}).turns[0].params.max_tokens == 7


HISTORY = [{"role": "user", "content": "Repeat after me: tiger"},
           {"role": "assistant", "content": "tiger", "reasoning_content": "Easy."},
           {"role": "user", "content": repeat_prompt("lemon")}]


async def rendered(api_key, model, messages) -> tuple[str, int]:
    counted = await (await post(api_key, "/tokenize", {"model": model, "messages": messages})).json()
    prompt = await (await post(api_key, "/detokenize", {"model": model, "tokens": counted["tokens"]})).json()
    return prompt["prompt"], counted["count"]


async def test_reasoning_given_back_in_the_history_reaches_the_template(reasoning_models, api_key):
    prompt, count = await rendered(api_key, "qwen3", HISTORY)
    assert "assistant\n<think>Easy.</think>tiger\nuser" in prompt  # special tokens are not decoded
    body = await chat(api_key, "qwen3", None, messages=HISTORY)
    assert body["usage"]["prompt_tokens"] == count
    assert body["choices"][0]["message"]["content"] == "lemon"

    # The Responses API: a reasoning output item given back, before the assistant's message.
    response = await (await post(api_key, "/v1/responses", {"model": "qwen3", "input": [
        HISTORY[0],
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Easy."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "tiger"}]},
        HISTORY[2]]})).json()
    assert response["usage"]["input_tokens"] == count
    assert response["output"][-1]["content"][0]["text"] == "lemon"


async def test_reasoning_content_belongs_to_assistant_messages_only(reasoning_models, api_key):
    response = await InProcessAPI().post("/v1/chat/completions", {"model": "qwen3", "messages": [
        {"role": "user", "content": "hi", "reasoning_content": "no"}]}, bearer(api_key))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error == {"message": "Invalid value for 'messages[0].reasoning_content': Only assistant messages have "
                                "'reasoning_content'.", "type": "invalid_request_error",
                     "param": "messages[0].reasoning_content", "code": "invalid_value"}


async def test_each_of_n_choices_has_its_reasoning_and_the_usage_sums_them(reasoning_models, api_key):
    prompt = repeat_prompt("tiger lemon")
    _, tokens = await raw_completion(api_key, "r1", prompt, 64)
    body = await chat(api_key, "r1", prompt, n=2)
    assert [choice["message"]["reasoning_content"] for choice in body["choices"]] == ["lemon tiger"] * 2
    assert body["usage"]["completion_tokens"] == 2 * tokens
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2 * tokens}
    chunks = await streamed(api_key, "/v1/chat/completions", {
        "model": "r1", "messages": [{"role": "user", "content": prompt}], "n": 2})
    for index in (0, 1):
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"][0]["index"] == index]
        assert "".join(delta.get("reasoning_content", "") for delta in deltas) == "lemon tiger"
        assert "".join(delta.get("content", "") for delta in deltas) == ""
