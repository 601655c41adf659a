"""The streaming machinery every tool-call parser shares (:class:`ToolParser`), and the
pieces the families' grammars are written with. The families themselves, and how a model's
is chosen, are inference/tool_parsers.py.
"""

from __future__ import annotations

import json

from inference.tools import ToolCall

# How templates' tojson writes JSON (", " and ": "): the grammars write it the same way.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ToolParser:
    """The streaming machinery shared by every family.

    A family says where a call region starts (:meth:`_start`), where it ends
    (:meth:`_end`) and which calls it holds (:meth:`_parse`). Whitespace around calls is
    not content: whitespace is held back until more content follows it."""

    name = ""
    markers: tuple[str, ...] = ()  # the format's marker texts (special tokens in some tokenizers)

    def __init__(self, names: set[str], *, parallel: bool = True):
        self.names = names
        self.parallel = parallel
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._opening: str | None = None  # the marker text of the call region being read
        self._spaces = ""
        self._json_end = _JsonEnd()

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        content, calls = [], []
        while True:
            if self._opening is None:
                found = self._start(self._buffer)
                if isinstance(found, tuple):
                    content_end, body_start = found
                    content.append(self._content(self._buffer[:content_end]))
                    self._opening = self._buffer[content_end:body_start]
                    self._buffer = self._buffer[body_start:]
                    continue
                keep = found
                content.append(self._content(self._buffer[:len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            span = self._end(self._buffer)
            if span is None:
                break
            self._json_end = _JsonEnd()
            body_end, region_end = span
            body, written = self._buffer[:body_end], self._opening + self._buffer[:region_end]
            self._buffer, self._opening = self._buffer[region_end:], None
            parsed = self._parse(body)
            if parsed is None:
                content.append(self._content(written))
                self._after_region(False)
                continue
            for call in parsed:
                if self.parallel or not self.calls:
                    self.calls.append(call)
                    calls.append(call)
            self._spaces = ""
            self._after_region(True)
        return "".join(content), calls

    def finish(self) -> str:
        """The text still held back, as content (an unfinished call stays text)."""
        rest = (self._opening or "") + self._buffer
        self._buffer, self._opening = "", None
        return self._content(rest) if rest.strip() else ""

    # --- what a family defines --------------------------------------------------------

    def _start(self, buffer: str) -> tuple[int, int] | int:
        """(where content ends, where the call region's body begins) if a region starts
        in ``buffer``; else how many characters at its end to hold back."""
        raise NotImplementedError

    def _end(self, body: str) -> tuple[int, int] | None:
        """(where the body ends, where the region ends) once the region is complete."""
        raise NotImplementedError

    def _parse(self, body: str) -> list[ToolCall] | None:
        """The calls of a complete region, or None if it is not one of valid calls."""
        raise NotImplementedError

    def _after_region(self, was_call: bool) -> None:
        pass

    @classmethod
    def grammar(cls, tools: list[dict], tool_choice, parallel: bool,
                marker_tokens: dict[str, int] | None = None, **variant) -> str:
        """A lark grammar (llguidance) whose sentences are one call (or, with ``parallel``,
        several) of the offered functions, or of the named one, with valid arguments.
        ``marker_tokens`` maps the markers that are added tokens to their ids."""
        raise NotImplementedError

    # --- shared helpers ---------------------------------------------------------------

    def _content(self, text: str) -> str:
        """Content to hand over now: trailing whitespace waits for more content (it is
        dropped if a call or the end comes first), so the result is the same however the
        text was split."""
        kept = text.rstrip()
        if not kept:
            self._spaces += text
            return ""
        content, self._spaces = self._spaces + kept, text[len(kept):]
        return content

    def _call(self, name, arguments) -> ToolCall | None:
        """A call of an offered function with an arguments object (or its JSON text)."""
        if not isinstance(name, str) or name not in self.names:
            return None
        if isinstance(arguments, str):  # some models write the arguments as a string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(name, json.dumps(arguments, ensure_ascii=False))

    def _object_call(self, value, keys=("arguments", "parameters")) -> ToolCall | None:
        if not isinstance(value, dict):
            return None
        arguments = next((value[key] for key in keys if key in value), {})
        return self._call(value.get("name"), arguments)

    def _list_calls(self, body: str) -> list[ToolCall] | None:
        """Calls written as a JSON list of {"name", "arguments"} objects (or one object)."""
        try:
            value = json.loads(body)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls = [self._object_call(item) for item in items]
        return calls if calls and None not in calls else None


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def _find_marker(buffer: str, marker: str) -> tuple[int, int] | int:
    start = buffer.find(marker)
    if start >= 0:
        return start, start + len(marker)
    return _partial_suffix(buffer, marker)


class _JsonEnd:
    """Where the JSON object or array beginning at ``start`` of a growing text closes
    (None while it is still open; ``start`` itself if none begins there). It carries on
    from where it stopped, so a long call streamed in small pieces is scanned once."""

    def __init__(self):
        self._start = -1
        self._index = self._depth = 0
        self._in_string = self._escaped = False

    def __call__(self, text: str, start: int) -> int | None:
        if start >= len(text):
            return None
        if text[start] not in "{[":
            return start
        if start != self._start:
            self._start, self._index, self._depth = start, start, 0
            self._in_string = self._escaped = False
        depth, in_string, escaped = self._depth, self._in_string, self._escaped
        for index in range(self._index, len(text)):
            char = text[index]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    self._start = -1  # the next region scans afresh
                    return index + 1
        self._index, self._depth, self._in_string, self._escaped = len(text), depth, in_string, escaped
        return None


def _skip_spaces(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _literal(text: str, marker_tokens: dict[str, int] | None) -> str:
    """A grammar terminal: the marker's own token, or its text."""
    if marker_tokens and text in marker_tokens:
        return f"<[{marker_tokens[text]}]>"
    return json.dumps(text, ensure_ascii=False)


def _functions(tools: list[dict], tool_choice) -> list[dict]:
    functions = [tool["function"] for tool in tools]
    if isinstance(tool_choice, dict):
        functions = [function for function in functions if function["name"] == tool_choice["name"]]
    return functions


def _json_rule(schema: dict) -> str:
    return f"%json {json.dumps({'x-guidance': _JSON_STYLE, **schema})}"


def _object_calls_schema(functions: list[dict], arguments_key: str) -> dict:
    """One JSON object per call: {"name": NAME, arguments_key: ARGUMENTS}."""
    bodies = [{
        "type": "object",
        "properties": {"name": {"const": function["name"]},
                       arguments_key: function.get("parameters") or {"type": "object"}},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    } for function in functions]
    return bodies[0] if len(bodies) == 1 else {"anyOf": bodies}


def _arguments_schema(function: dict) -> dict:
    return function.get("parameters") or {"type": "object"}
