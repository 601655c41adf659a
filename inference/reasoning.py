"""Reasoning ("thinking") separated from the answer, for models that write their chain of
thought between ``<think>`` and ``</think>`` (Qwen3, QwQ, the DeepSeek-R1 distills).

A :class:`ReasoningSplitter` reads one choice's output as the engine delivers it, one
token's text at a time, and returns the reasoning and the content in it; text that may be
the start of a tag is held back until the next piece tells. It counts the tokens generated
up to and including the one that completes ``</think>``: ``reasoning_tokens``.

Two parsers, chosen per model (``ModelOptions.reasoning_parser``):

- ``deepseek_r1``: the chat template ends its generation prompt with ``<think>\\n``, so
  the output begins inside the reasoning and runs to ``</think>``; a ``<think>`` the model
  writes itself at the start is dropped. No ``</think>`` at all (the answer was cut off):
  everything is reasoning.
- ``qwen3``: the model opens the block itself: output that begins with ``<think>`` is
  reasoning up to ``</think>`` (all of it if ``</think>`` never comes: cut off while
  thinking); output that begins otherwise is all content. A template that opens the block
  in the prompt (QwQ, later Qwen3 releases) makes the output begin inside the reasoning,
  as for ``deepseek_r1``.

For both, the prompt decides first (:func:`splitter_for`): a prompt that ends with a
closed block (``<think>\\n\\n</think>``, as templates write it for
``enable_thinking=false``) leaves nothing to think, and the output is all content.

Whitespace around the reasoning (the newline after ``<think>``, before and after
``</think>``) belongs to neither part, as the Qwen3 model card strips it.
"""

from __future__ import annotations

import re

THINK_START = "<think>"
THINK_END = "</think>"

PARSERS = ("deepseek_r1", "qwen3")

# The phases of one output.
_OPENING = "opening"  # before the first text: may open with <think>
_REASONING = "reasoning"
_AFTER_REASONING = "after_reasoning"  # dropping the whitespace after </think>
_CONTENT = "content"


class ReasoningSplitter:
    """The reasoning/content split of one output, fed piece by piece.

    ``in_reasoning``: the prompt opened the block, the output begins inside it (a leading
    ``<think>`` is still dropped). Otherwise the output is reasoning only if it opens with
    ``<think>``.
    """

    def __init__(self, *, in_reasoning: bool):
        self.in_reasoning = in_reasoning
        self.phase = _OPENING
        self.reasoning_tokens = 0
        self.reasoning_ended = False  # </think> was seen
        self._held = ""  # text not yet given out: a possible tag, or whitespace
        self._opening_tokens = 0  # tokens read while the opening was undecided
        self._reasoning_said = False  # some reasoning text was given out

    def feed(self, text: str, tokens: int = 1) -> tuple[str, str]:
        """The reasoning and the content that ``text`` (the text of ``tokens`` tokens)
        makes certain."""
        counted_as_reasoning = self.phase == _REASONING
        if self.phase == _OPENING:
            self._opening_tokens += tokens
        reasoning, content = self._read(text)
        if counted_as_reasoning:
            self.reasoning_tokens += tokens
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held back, once the output has ended."""
        held, self._held = self._held, ""
        if self.phase == _OPENING:
            if self.in_reasoning:
                self._begin_reasoning()
                return held.strip(), ""
            self.phase = _CONTENT
            return "", held
        if self.phase == _REASONING:
            return held.rstrip(), ""  # a partial tag is text; trailing whitespace is not
        return "", ""  # only whitespace after </think> can be held

    def _begin_reasoning(self) -> None:
        self.phase = _REASONING
        self.reasoning_tokens += self._opening_tokens
        self._opening_tokens = 0

    def _read(self, text: str) -> tuple[str, str]:
        reasoning_parts, content_parts = [], []
        buffer = self._held + text
        self._held = ""
        while buffer:
            if self.phase == _OPENING:
                stripped = buffer.lstrip()
                if not stripped or (len(stripped) < len(THINK_START) and THINK_START.startswith(stripped)):
                    self._held = buffer  # whitespace, or the start of a <think>: not known yet
                    break
                if stripped.startswith(THINK_START):
                    self._begin_reasoning()
                    buffer = stripped[len(THINK_START):].lstrip()
                elif self.in_reasoning:
                    self._begin_reasoning()
                    buffer = stripped
                else:
                    self.phase = _CONTENT
                    self._opening_tokens = 0
            elif self.phase == _REASONING:
                if not self._reasoning_said:
                    buffer = buffer.lstrip()  # the newline after <think> is not reasoning
                    if not buffer:
                        break
                end = buffer.find(THINK_END)
                if end >= 0:
                    reasoning_parts.append(buffer[:end].rstrip())
                    buffer = buffer[end + len(THINK_END):]
                    self.phase = _AFTER_REASONING
                    self.reasoning_ended = True
                    continue
                keep = _partial_suffix(buffer, THINK_END)
                body = buffer[:len(buffer) - keep]
                settled = body.rstrip()  # whitespace is reasoning only if more reasoning follows
                reasoning_parts.append(settled)
                self._reasoning_said = self._reasoning_said or bool(settled)
                self._held = buffer[len(settled):]
                break
            elif self.phase == _AFTER_REASONING:
                buffer = buffer.lstrip()
                if buffer:
                    self.phase = _CONTENT
            else:
                content_parts.append(buffer)
                break
        return "".join(reasoning_parts), "".join(content_parts)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (and is not all of it)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def split_whole(text: str, *, in_reasoning: bool) -> tuple[str, str]:
    """The reasoning and content of a whole output: what :class:`ReasoningSplitter` gives
    for it fed at once."""
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.finish()
    return reasoning + tail_reasoning, content + tail_content


def splitter_for(parser: str | None, prompt: str) -> ReasoningSplitter | None:
    """The splitter of one output of a model with reasoning ``parser`` (a name of
    :data:`PARSERS`, or None), generated after ``prompt``; None when it has no reasoning
    to separate (no parser, or a prompt that closed the block: thinking switched off)."""
    if parser is None:
        return None
    tail = prompt.rstrip()
    if tail.endswith(THINK_END):
        return None
    opened_in_prompt = tail.endswith(THINK_START)
    return ReasoningSplitter(in_reasoning=parser == "deepseek_r1" or opened_in_prompt)


def resolve_parser(option: str, template: str | None) -> str | None:
    """The reasoning parser a model uses: ``option`` as configured ("auto", "none", or a
    name of :data:`PARSERS`), "auto" read off its chat template source."""
    if option == "none":
        return None
    if option != "auto":
        if option not in PARSERS:
            raise ValueError(f"unknown reasoning parser {option!r}; known: auto, none, {', '.join(PARSERS)}")
        return option
    return detect_parser(template)


# An opening <think> (and newlines) at the end of a string literal or of a run of the
# template's text: the generation prompt opens the reasoning block itself.
_OPENS_IN_PROMPT = re.compile(r"<think>(?:\\n|\n)*(?:['\"]|\{[{%])")


def detect_parser(template: str | None) -> str | None:
    """The reasoning parser a chat template calls for: none for a template that neither
    writes nor strips ``<think>``; ``deepseek_r1`` when its generation prompt (the part after
    its last ``add_generation_prompt``) ends with ``<think>``; ``qwen3`` otherwise."""
    if not template or (THINK_START not in template and THINK_END not in template):
        return None
    generation_prompt = template[template.rfind("add_generation_prompt"):] if "add_generation_prompt" in template else ""
    return "deepseek_r1" if _OPENS_IN_PROMPT.search(generation_prompt) else "qwen3"


