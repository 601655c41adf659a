"""The engine's decoder (inference/decoding.py) on real tokenizers (.zoo/tokenizers) with
og's own tokenizer: tool-call and reasoning markers that are special tokens come out as
their text, other special tokens as nothing (no stray space), SentencePiece answers start
without the space HF's decode strips, and characters split over tokens come out whole."""

from __future__ import annotations

import pytest

from inference.decoding import TokenDecoder
from tests.real_tokenizers import og_tokenizer, tokenizer_folder

# Markers a fine-tuned family adds as special tokens (Mistral, Llama 3.1, Phi-4-mini).
MARKER_TOKENS = [{"content": "[TOOL_CALLS]", "special": True}, {"content": "[ARGS]", "special": True},
                 {"content": "<|python_tag|>", "special": True}, {"content": "<|tool_call|>", "special": True},
                 {"content": "<|/tool_call|>", "special": True}, {"content": "<think>", "special": True},
                 {"content": "</think>", "special": True}, {"content": "<|not_a_marker|>", "special": True}]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            folder = tokenizer_folder(name, tmp_path_factory.mktemp(name), MARKER_TOKENS)
            tokenizer = og_tokenizer(folder)
            made[name] = tokenizer, TokenDecoder(tokenizer, folder)
        return made[name]
    return get


def ids(tokenizer, text: str) -> list[int]:
    return [int(token) for token in tokenizer.encode(text)]


def decode(decoder: TokenDecoder, tokens: list[int]) -> list[str]:
    stream = decoder.create_stream()
    return [stream.decode(token) for token in tokens]


def og_decode(tokenizer, tokens: list[int]) -> str:
    stream = tokenizer.create_stream()
    return "".join(stream.decode(token) for token in tokens)


NAMES = ["qwen3", "llama3_1", "llama2", "deepseek_v3", "gemma3"]
CALLS = ["[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}",
         "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {}}",
         "<|tool_call|>[{\"name\": \"get_weather\", \"arguments\": {}}]<|/tool_call|>",
         "<think>Hmm.</think>Sure."]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", CALLS)
def test_markers_that_are_special_tokens_come_out_as_their_text(tokenizers, name, text):
    tokenizer, decoder = tokenizers(name)
    tokens = ids(tokenizer, text)
    out = "".join(decode(decoder, tokens))
    if name == "llama2":  # SentencePiece puts a space before a word after a special token, as HF decodes it
        out = out.replace("> {", ">{").replace("] get", "]get").replace("] {", "]{").replace("> [", ">[").replace(
            "> Hmm", ">Hmm").replace("> Sure", ">Sure")
    assert out == text


@pytest.mark.parametrize("name, end", [("qwen3", "<|im_end|>"), ("llama3_1", "<|eot_id|>"), ("llama2", "</s>"),
                                       ("deepseek_v3", "<｜end▁of▁sentence｜>"), ("gemma3", "<end_of_turn>")])
def test_other_special_tokens_add_nothing_not_even_a_space(tokenizers, name, end):
    tokenizer, decoder = tokenizers(name)
    [end_id] = ids(tokenizer, end)
    [other] = ids(tokenizer, "<|not_a_marker|>")
    tokens = ids(tokenizer, "Hi there") + [other, end_id]
    pieces = decode(decoder, tokens)
    assert pieces[-2:] == ["", ""]
    assert "".join(pieces) == "Hi there"


def test_what_ogs_own_stream_does_with_special_tokens(tokenizers):
    """What the decoder exists for: og's stream skips a special marker, and its
    clean-up turns a skipped token into spaces."""
    tokenizer, decoder = tokenizers("llama3_1")
    tokens = ids(tokenizer, "<|python_tag|>{}")
    assert (og_decode(tokenizer, tokens), "".join(decode(decoder, tokens))) == ("  {}", "<|python_tag|>{}")
    tokens = ids(tokenizer, "Hi") + ids(tokenizer, "<|eot_id|>")
    assert (og_decode(tokenizer, tokens), "".join(decode(decoder, tokens))) == ("Hi ", "Hi")


@pytest.mark.parametrize("name, strips", [("llama2", True), ("gemma3", False), ("qwen3", False), ("llama3_1", False),
                                          ("deepseek_v3", False)])
def test_an_answer_begins_without_a_leading_space_as_hf_decodes_it(tokenizers, name, strips):
    tokenizer, decoder = tokenizers(name)
    assert decoder.strips_leading_space is strips
    tokens = ids(tokenizer, "Paris is nice")
    assert "".join(decode(decoder, tokens)) == "Paris is nice"
    if strips:  # only the answer's first space goes: a later word keeps its own
        assert "".join(decode(decoder, tokens + ids(tokenizer, "and warm"))) == "Paris is nice and warm"


@pytest.mark.parametrize("name", NAMES)
def test_characters_split_over_tokens_come_out_whole(tokenizers, name):
    tokenizer, decoder = tokenizers(name)
    text = "Café 東京 🌍🚀 naïve"
    tokens = ids(tokenizer, text)
    pieces = decode(decoder, tokens)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_deepseek_markers_and_qwen_tags_that_are_ordinary_added_tokens_stay_text(tokenizers):
    tokenizer, decoder = tokenizers("deepseek_v3")
    text = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```"
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    tokens = ids(tokenizer, text) + ids(tokenizer, "<｜end▁of▁sentence｜>")
    assert "".join(decode(decoder, tokens)) == text
    tokenizer, decoder = tokenizers("qwen3")
    text = '<think>\nok\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    tokens = ids(tokenizer, text) + ids(tokenizer, "<|im_end|>")
    assert "".join(decode(decoder, tokens)) == text


@pytest.mark.parametrize("decoder, strips", [
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}, True),
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}, True),
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}, False),
    ({"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}, True),
    ({"type": "Metaspace", "replacement": "▁", "add_prefix_space": False}, False),
    ({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                       {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}, True),
    ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, False),
    (None, False),
])
def test_which_tokenizer_decoders_drop_the_first_words_space(decoder, strips):
    from inference.decoding import _strips_leading_space

    assert _strips_leading_space(decoder) is strips
