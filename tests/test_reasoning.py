"""Reasoning models: the <think> block separated from the answer (inference/reasoning.py),
by parsers tested on exact strings, by the real engine's turns, and through the API."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from demomodel.corpus import CHAT_TEMPLATE, repeat_prompt
from inference.reasoning import (ReasoningSplitter, detect_parser, resolve_parser, split_whole, splitter_for,
                                 template_source)
from tests.asgi import InProcessAPI
from tests.conftest import DEMO_MODEL, ROOT, bearer, sse_events

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


@pytest.mark.skipif(not ZOO_TEMPLATES.is_dir(), reason="the real chat templates are fetched by `make zoo-sources`")
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


def test_the_template_source_is_the_jinja_file_else_the_tokenizer_config(tmp_path):
    assert template_source(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert template_source(tmp_path) == "D"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "C"}))
    assert template_source(tmp_path) == "C"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert template_source(tmp_path) == "J"


# --- demo-model copies whose chat templates make them reasoning models ---------------------

# The demo model's template, an assistant's history kept to its answer, with the generation
# prompt opening the block as DeepSeek-R1's and QwQ's do.
_HISTORY = "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
R1_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _HISTORY + "{{ content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
# As Qwen3's: the model opens the block itself, the generation prompt does not.
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _HISTORY + "{{ content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
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
        ModelSpec("demo", str(DEMO_MODEL), max_batch_size=4),
        ModelSpec("r1", str(demo_copy(base / "r1", R1_TEMPLATE)), max_batch_size=4),
        ModelSpec("qwen3", str(demo_copy(base / "qwen3", QWEN3_TEMPLATE)), max_batch_size=4),
        ModelSpec("r1-off", str(base / "r1"), max_batch_size=4, model_options=ModelOptions(reasoning_parser="none")),
    ]
    registry.configure(specs, default="demo", max_loaded=4)
    registry.preload()
    yield {slot.spec.id: slot for slot in registry.slots()}
    registry.stop_all()
    shutil.rmtree(base)
