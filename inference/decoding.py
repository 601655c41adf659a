"""Generated tokens to text, as the server hands them on (the engine thread's decoder).

onnxruntime-genai's tokenizer stream skips every special token, so a tool call's marker
that is a special token of the model (Mistral's ``[TOOL_CALLS]``, Llama's
``<|python_tag|>``, Phi-4-mini's ``<|tool_call|>``) never reaches a parser; and with
``clean_up_tokenization_spaces`` a skipped token still yields a space. A
:class:`TokenDecoder` therefore sees the special tokens first, by id (tokenizer.json's
``added_tokens``): a marker of a tool-call or reasoning format becomes its own text, any
other special token (end of turn, padding) nothing. Ordinary tokens go through og's
stream, which joins multi-byte characters split over tokens.

SentencePiece tokenizers whose decoder strips the space it put before the first word
(``Strip`` in a Llama 2 / Mistral tokenizer.json, ``Metaspace`` with a prepended space)
answer as Hugging Face decodes the generated ids alone: without that leading space.
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.tool_parsers import TOOL_MARKERS

REASONING_MARKERS = ("<think>", "</think>")
MARKERS = frozenset(TOOL_MARKERS + REASONING_MARKERS)


class TokenDecoder:
    """One model's decoder; :meth:`create_stream` gives one stream per turn."""

    def __init__(self, tokenizer, model_path: str | Path):
        self.tokenizer = tokenizer
        self.special: dict[int, str] = {}  # special token id -> the text it stands for ("" if none)
        self.strips_leading_space = False
        try:
            config = json.loads((Path(model_path) / "tokenizer.json").read_text())
        except (OSError, ValueError):
            return
        for token in config.get("added_tokens", []):
            if token.get("special"):
                content = token.get("content", "")
                self.special[int(token["id"])] = content if content in MARKERS else ""
        self.strips_leading_space = _strips_leading_space(config.get("decoder"))

    def create_stream(self) -> DecodeStream:
        return DecodeStream(self)


class DecodeStream:
    """``decode(token)`` returns the text that token completes (often "" inside a
    multi-byte character), like og's TokenizerStream."""

    def __init__(self, decoder: TokenDecoder):
        self._special = decoder.special
        self._stream = decoder.tokenizer.create_stream()
        self._strip_next = decoder.strips_leading_space  # until the answer's first text

    def decode(self, token: int) -> str:
        text = self._special.get(token)
        if text is None:
            text = self._stream.decode(token)
            if self._strip_next and text:
                self._strip_next = False
                if text.startswith(" "):
                    text = text[1:]
        elif text:
            self._strip_next = False
        return text


def _strips_leading_space(decoder: dict | None) -> bool:
    """Whether Hugging Face's decoding drops the space before the first word."""
    if not isinstance(decoder, dict):
        return False
    kind = decoder.get("type")
    if kind == "Sequence":
        return any(_strips_leading_space(part) for part in decoder.get("decoders", []))
    if kind == "Strip":
        return decoder.get("content") == " " and int(decoder.get("start", 0)) > 0
    if kind == "Metaspace":
        return decoder.get("prepend_scheme", "always" if decoder.get("add_prefix_space", True) else "never") != "never"
    return False
