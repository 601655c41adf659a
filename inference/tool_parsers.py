"""Tool calls as each model family writes them, read out of its text as it streams.

A family's format is the one its chat template writes an assistant's calls back in (and
the one the model was trained to answer in):

- ``hermes`` (Qwen2.5, Qwen3, QwQ, Hermes, the demo model)::

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>

  one block per call, blocks separated by a newline.
- ``llama3_json`` (Llama 3.1-3.3): the whole answer is ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>``; several calls are separated by ``;``.
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (Mistral 7B v0.3,
  Nemo), or ``[TOOL_CALLS]name[ARGS]{...}`` once per call (Mistral Small 3.2, Devstral,
  Ministral 3), possibly with ``[CALL_ID]id`` before ``[ARGS]``.
- ``phi4_mini``: ``<|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>``.
- ``deepseek`` (DeepSeek V3, R1 and its distills)::

      <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
      ```json
      {"city": "Paris"}
      ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

  calls separated by a newline inside one calls block. (DeepSeek V3.1 drops the type and
  the fence: ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>``; that is read too.)

Every parser has one interface: :meth:`ToolParser.feed` takes the next text and returns
(content, calls completed by it), holding back text that may begin a call until it is
known; :meth:`ToolParser.finish` returns what is still held back, as content. A call is
handed over only whole, naming an offered function with an arguments object; anything
else (malformed JSON, an unknown function, an unfinished call) stays content, as written.
:meth:`ToolParser.grammar` is the engine's guidance (an llguidance lark grammar) when a
call is required or one function is named: the output can then only be calls in the
family's own format, each naming an offered function with arguments valid against its
parameters' schema. Markers that are tokens of their own in the model's tokenizer (added
tokens) are written in the grammar as those tokens (``<[id]>``), as the model writes them;
the engine's decoder (inference/decoding.py) gives them back as their text.

:func:`select_tool_parser` picks a model's format: the configured name, or with "auto"
the one its chat template writes calls in. :class:`ToolParser` and the helpers the
grammars are written with are inference/tool_parser_base.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from inference.chat_template import template_text
from inference.tool_parser_base import (ToolParser, _arguments_schema, _find_marker, _functions, _json_rule, _literal,
                                        _object_calls_schema, _partial_suffix, _skip_spaces)
from inference.tools import ToolCall


class _BlockParser(ToolParser):
    """Calls written between an opening and a closing marker."""

    OPEN = CLOSE = ""

    def _start(self, buffer):
        return _find_marker(buffer, self.OPEN)

    def _end(self, body):
        end = body.find(self.CLOSE)
        return None if end < 0 else (end, end + len(self.CLOSE))


class HermesParser(_BlockParser):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    markers = (OPEN, CLOSE)

    def _parse(self, body):
        try:
            call = self._object_call(json.loads(body), keys=("arguments",))
        except ValueError:
            return None
        return None if call is None else [call]

    @classmethod
    def grammar(cls, tools, tool_choice, parallel, marker_tokens=None, **variant):
        opening, closing = _literal(cls.OPEN, marker_tokens), _literal(cls.CLOSE, marker_tokens)
        if opening.startswith('"') and closing.startswith('"'):  # markers as text, the newlines joined to them
            call = f'"{cls.OPEN}\\n" body "\\n{cls.CLOSE}"'
        else:
            call = f'{opening} "\\n" body "\\n" {closing}'
        more = ' ("\\n" call)*' if parallel else ""
        return (f"start: call{more}\n"
                f"call: {call}\n"
                f"body: {_json_rule(_object_calls_schema(_functions(tools, tool_choice), 'arguments'))}\n")


class Llama3JsonParser(ToolParser):
    """A call is the answer itself: a JSON object from its first character on (after
    ``<|python_tag|>``, if written); ``;`` separates calls. Text that begins otherwise is
    content, and so is everything after a region that is not a call."""

    name = "llama3_json"
    PYTHON_TAG = "<|python_tag|>"
    markers = (PYTHON_TAG,)

    def __init__(self, names, *, parallel=True):
        super().__init__(names, parallel=parallel)
        self._may_start = True  # a call may begin here (the answer's start, or after a call)
        self._after_call = False

    def _start(self, buffer):
        if not self._may_start:
            return 0
        index = 0
        while index < len(buffer) and (buffer[index].isspace() or (self._after_call and buffer[index] == ";")):
            index += 1
        rest = buffer[index:]
        if not rest:
            return len(buffer)  # only separators so far
        content_end = 0 if self._after_call else index  # separators after a call are not content
        if rest.startswith(self.PYTHON_TAG):
            return content_end, index + len(self.PYTHON_TAG)
        if rest.startswith("{"):
            return content_end, index
        if self.PYTHON_TAG.startswith(rest):
            return len(buffer)
        self._may_start = False
        return 0

    def _end(self, body):
        end = self._json_end(body, _skip_spaces(body, 0))
        return None if end is None else (end, end)

    def _parse(self, body):
        try:
            call = self._object_call(json.loads(body))
        except ValueError:
            return None
        return None if call is None else [call]

    def _after_region(self, was_call):
        self._may_start = self._after_call = was_call

    def finish(self):
        if self._after_call and self._opening is None and not self._buffer.strip(" \t\r\n;"):
            self._buffer = ""  # separators after the last call
        return super().finish()

    @classmethod
    def grammar(cls, tools, tool_choice, parallel, marker_tokens=None, **variant):
        more = ' ("; " call)*' if parallel else ""
        return (f"start: call{more}\n"
                f"call: {_json_rule(_object_calls_schema(_functions(tools, tool_choice), 'parameters'))}\n")


class MistralParser(ToolParser):
    """``[TOOL_CALLS]`` and then a JSON list of calls, or a name, ``[ARGS]`` and its
    arguments object (the form of the newer tokenizers, one ``[TOOL_CALLS]`` per call;
    ``[ARGS]`` may be missing where it was decoded as nothing, as vLLM reads it)."""

    name = "mistral"
    TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
    markers = (TOOL_CALLS, ARGS, CALL_ID)
    _NAME = re.compile(r"[A-Za-z0-9_.\-]+")

    def _start(self, buffer):
        return _find_marker(buffer, self.TOOL_CALLS)

    def _end(self, body):
        start = _skip_spaces(body, 0)
        if start == len(body):
            return None
        if body[start] == "[":
            end = self._json_end(body, start)
            return None if end is None else (end, end)
        arguments = self._arguments_start(body)
        if arguments is None:
            # The name (and call id) are still coming, unless what came cannot be them.
            head = body[start:]
            head = head[:len(head) - max(_partial_suffix(head, self.ARGS), _partial_suffix(head, self.CALL_ID))]
            name, _, call_id = head.partition(self.CALL_ID)
            if (name and not self._NAME.fullmatch(name)) or (call_id and not call_id.isalnum()):
                return start, start
            return None
        end = self._json_end(body, arguments)
        return None if end is None else (end, end)

    def _arguments_start(self, body: str) -> int | None:
        """Where the arguments object of a name-first call begins, once it is known."""
        args = body.find(self.ARGS)
        if args >= 0:
            return _skip_spaces(body, args + len(self.ARGS))
        brace = body.find("{")
        return brace if brace >= 0 else None

    def _parse(self, body):
        stripped = body.strip()
        if stripped.startswith("["):
            return self._list_calls(stripped)
        arguments_start = self._arguments_start(body)
        if arguments_start is None:
            return None
        head = body[:arguments_start].strip()
        head = head[:-len(self.ARGS)] if head.endswith(self.ARGS) else head
        name = head.split(self.CALL_ID)[0].strip()
        try:
            arguments = json.loads(body[arguments_start:])
        except ValueError:
            return None
        call = self._call(name, arguments) if isinstance(arguments, dict) else None
        return None if call is None else [call]

    @classmethod
    def grammar(cls, tools, tool_choice, parallel, marker_tokens=None, args_form=False, **variant):
        functions = _functions(tools, tool_choice)
        opening = _literal(cls.TOOL_CALLS, marker_tokens)
        if not args_form:
            more = ' (", " call)*' if parallel else ""
            return (f'start: {opening} "[" call{more} "]"\n'
                    f"call: {_json_rule(_object_calls_schema(functions, 'arguments'))}\n")
        args = _literal(cls.ARGS, marker_tokens)
        rules = [f"start: call{'+' if parallel else ''}",
                 "call: " + " | ".join(f"call_{index}" for index in range(len(functions)))]
        for index, function in enumerate(functions):
            rules.append(f"call_{index}: {opening} {json.dumps(function['name'])} {args} arguments_{index}")
            rules.append(f"arguments_{index}: {_json_rule(_arguments_schema(function))}")
        return "\n".join(rules) + "\n"


class Phi4MiniParser(_BlockParser):
    name = "phi4_mini"
    OPEN, CLOSE = "<|tool_call|>", "<|/tool_call|>"
    markers = (OPEN, CLOSE)

    def _parse(self, body):
        return self._list_calls(body.strip())

    @classmethod
    def grammar(cls, tools, tool_choice, parallel, marker_tokens=None, **variant):
        more = ' (", " call)*' if parallel else ""
        return (f'start: {_literal(cls.OPEN, marker_tokens)} "[" call{more} "]" {_literal(cls.CLOSE, marker_tokens)}\n'
                f"call: {_json_rule(_object_calls_schema(_functions(tools, tool_choice), 'arguments'))}\n")


class DeepSeekParser(ToolParser):
    name = "deepseek"
    CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
    markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)
    # V3 and R1: type, separator, name, then the arguments in a json fence; V3.1: name,
    # separator, arguments.
    _FENCED = re.compile(r"(\w+)<｜tool▁sep｜>(.+?)\n```json\n(.*)\n```", re.DOTALL)
    _PLAIN = re.compile(r"([^<\n]+?)<｜tool▁sep｜>(.*)", re.DOTALL)

    def _start(self, buffer):
        return _find_marker(buffer, self.CALLS_BEGIN)

    def _end(self, body):
        end = body.find(self.CALLS_END)
        return None if end < 0 else (end, end + len(self.CALLS_END))

    def _parse(self, body):
        calls = []
        pieces = body.split(self.CALL_BEGIN)
        if pieces[0].strip():
            return None
        for piece in pieces[1:]:
            piece, _, after = piece.partition(self.CALL_END)
            if not _ or after.strip():
                return None
            fenced = self._FENCED.fullmatch(piece)
            if fenced:
                name, arguments = fenced.group(2).strip(), fenced.group(3)
            else:
                plain = self._PLAIN.fullmatch(piece)
                if not plain:
                    return None
                name, arguments = plain.group(1).strip(), plain.group(2)
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
            call = self._call(name, arguments) if isinstance(arguments, dict) else None
            if call is None:
                return None
            calls.append(call)
        return calls or None

    @classmethod
    def grammar(cls, tools, tool_choice, parallel, marker_tokens=None, fenced=True, **variant):
        """V3 and R1's fenced form, or with ``fenced`` false V3.1's."""
        functions = _functions(tools, tool_choice)
        begin, end, sep = (_literal(marker, marker_tokens) for marker in (cls.CALL_BEGIN, cls.CALL_END, cls.SEP))
        more = ' ("\\n" call)*' if parallel else ""
        rules = [f"start: {_literal(cls.CALLS_BEGIN, marker_tokens)} call{more} {_literal(cls.CALLS_END, marker_tokens)}",
                 "call: " + " | ".join(f"call_{index}" for index in range(len(functions)))]
        for index, function in enumerate(functions):
            if fenced:
                name = json.dumps(function["name"] + "\n```json\n")
                rules.append(f'call_{index}: {begin} "function" {sep} {name} arguments_{index} "\\n```" {end}')
            else:
                rules.append(f'call_{index}: {begin} {json.dumps(function["name"])} {sep} arguments_{index} {end}')
            rules.append(f"arguments_{index}: {_json_rule(_arguments_schema(function))}")
        return "\n".join(rules) + "\n"


PARSERS: dict[str, type[ToolParser]] = {parser.name: parser for parser in (
    HermesParser, Llama3JsonParser, MistralParser, Phi4MiniParser, DeepSeekParser)}

# Every family's markers: the special tokens a decoder gives back as text.
TOOL_MARKERS = tuple(marker for parser in PARSERS.values() for marker in parser.markers)


def parse_tool_calls(text: str, parser: ToolParser) -> tuple[str | None, list[ToolCall]]:
    """A whole answer as (content or None, calls), read by a fresh ``parser``."""
    content, _ = parser.feed(text)
    content = (content + parser.finish()).strip()
    return content or None, parser.calls


@dataclass(frozen=True)
class ToolParsing:
    """A model's tool-call format: its parser, the ids of its markers that are tokens of
    its own (added tokens), and the variant of the format its template writes."""

    parser_class: type[ToolParser]
    marker_tokens: dict[str, int] = field(default_factory=dict)
    variant: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.parser_class.name

    def parser(self, names: set[str], *, parallel: bool = True) -> ToolParser:
        return self.parser_class(names, parallel=parallel)

    def grammar(self, tools: list[dict], tool_choice, parallel: bool) -> str:
        return self.parser_class.grammar(tools, tool_choice, parallel, self.marker_tokens, **self.variant)


class UnknownToolParser(ValueError):
    pass


def detect_tool_parser(template: str) -> str | None:
    """The format a chat template writes calls in, where it is unambiguous; else None."""
    # Formats that look alike but write calls otherwise: XML-like arguments (Qwen3-Coder's
    # and Functionary's <function=...>, GLM's <arg_key>, MiniMax's <invoke>).
    xml_like = any(sign in template for sign in ("<function=", "<arg_key>", "<invoke"))
    if DeepSeekParser.CALLS_BEGIN in template and DeepSeekParser.SEP in template:
        return "deepseek"
    if MistralParser.TOOL_CALLS in template:
        return "mistral"
    if Phi4MiniParser.OPEN in template and Phi4MiniParser.CLOSE in template:  # Granite 3 has no closing marker
        return "phi4_mini"
    if HermesParser.OPEN in template and not xml_like:
        return "hermes"
    if not xml_like and (Llama3JsonParser.PYTHON_TAG in template
                         or ('"parameters": ' in template and "<|start_header_id|>" in template)):
        return "llama3_json"
    return None


def added_token_ids(model_path: str | Path) -> dict[str, int]:
    """The added tokens of the model's tokenizer.json (content -> id). A grammar must name
    them as tokens: llguidance does not match their text with them."""
    try:
        tokenizer = json.loads((Path(model_path) / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return {}
    return {token["content"]: int(token["id"]) for token in tokenizer.get("added_tokens", [])}


def select_tool_parser(model_path: str | Path, option: str = "auto",
                       chat_template: str | None = None) -> ToolParsing | None:
    """The model's tool-call format: ``option`` is "auto" (from its chat template),
    "none" (no calls are read; the answer is content) or a parser's name. None when
    no calls are read. Raises UnknownToolParser for a name no parser has."""
    if option == "none":
        return None
    if option != "auto" and option not in PARSERS:
        raise UnknownToolParser(f"unknown tool_parser '{option}' (one of: auto, none, {', '.join(PARSERS)})")
    template = template_text(model_path, chat_template)
    added = added_token_ids(model_path)
    name = option
    if option == "auto":
        # A template may name the format nowhere (Phi-4-mini's shows tools in <|tool|>
        # only); the tokenizer's own markers then tell.
        name = detect_tool_parser(template) or detect_tool_parser(" ".join(
            marker for marker in (Phi4MiniParser.OPEN, Phi4MiniParser.CLOSE, MistralParser.TOOL_CALLS) if marker in added))
    if name is None:
        return None
    parser_class = PARSERS[name]
    variant = {}
    if parser_class is MistralParser:
        variant["args_form"] = MistralParser.ARGS in template or MistralParser.ARGS in added
    if parser_class is DeepSeekParser:
        # V3.1's template writes calls without the fence; without a template to tell, V3's.
        variant["fenced"] = "```json" in template or DeepSeekParser.CALLS_BEGIN not in template
    return ToolParsing(parser_class, {marker: added[marker] for marker in parser_class.markers if marker in added},
                       variant)
