"""Tool calls in the "Hermes" form that Qwen2.5, Hermes and the demo model write:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, blocks separated by a newline. The tools themselves reach the model
through its chat template (``apply_chat_template(..., tools=...)``).

- :class:`ToolCallParser` turns a choice's text, as it streams, into content and calls.
- :func:`tool_call_grammar` is the engine's guidance when a call is required (or one
  function is named): the output can then only be such blocks, each naming an offered
  function with arguments valid against its parameters' schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from inference.chat_template import new_tool_call_id

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# How the template's tojson writes JSON (", " and ": "): the grammar writes it the same way.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def __post_init__(self):
        self.id = self.id or new_tool_call_id()  # 9 letters and digits: see inference.chat_template

    def as_message_part(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallParser:
    """Feed a choice's text piece by piece; get back content text and complete calls.

    Text that may be the start of ``<tool_call>`` is held back until it is known not to
    be; a block is handed over when its ``</tool_call>`` arrives. Whitespace around calls
    is not content. A block that is not a JSON call stays content, as written."""

    def __init__(self, names: set[str], *, parallel: bool = True):
        self.names = names
        self.parallel = parallel
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._inside = False
        self._spaces = ""  # whitespace held back: content only if more content follows

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        content, calls = [], []
        while True:
            if self._inside:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE):]
                self._inside = False
                call = self._call(body)
                if call is None:
                    content.append(self._content(OPEN + body + CLOSE))
                elif self.parallel or not self.calls:
                    self.calls.append(call)
                    calls.append(call)
                    self._spaces = ""
            else:
                start = self._buffer.find(OPEN)
                if start >= 0:
                    content.append(self._content(self._buffer[:start]))
                    self._buffer = self._buffer[start + len(OPEN):]
                    self._inside = True
                    continue
                keep = _partial_suffix(self._buffer, OPEN)
                content.append(self._content(self._buffer[:len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
        return "".join(content), calls

    def finish(self) -> str:
        """The text still held back, as content (an unclosed block stays text)."""
        rest = (OPEN if self._inside else "") + self._buffer
        self._buffer, self._inside = "", False
        return self._content(rest) if rest.strip() else ""

    def _content(self, text: str) -> str:
        if not text:
            return ""
        if not text.strip():
            self._spaces += text
            return ""
        text, self._spaces = self._spaces + text, ""
        return text

    def _call(self, body: str) -> ToolCall | None:
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in self.names:
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(call["name"], json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str, names: set[str], *, parallel: bool = True) -> tuple[str | None, list[ToolCall]]:
    """A whole answer as (content or None, calls)."""
    parser = ToolCallParser(names, parallel=parallel)
    content, _ = parser.feed(text)
    content = (content + parser.finish()).strip()
    return content or None, parser.calls


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def tool_call_grammar(tools: list[dict], choice, *, parallel: bool) -> str:
    """A lark grammar (llguidance) whose sentences are one call (or, with ``parallel``,
    several) of the offered functions, or of the named one, with valid arguments."""
    functions = [tool["function"] for tool in tools]
    if isinstance(choice, dict):
        functions = [function for function in functions if function["name"] == choice["name"]]
    bodies = [{
        "type": "object",
        "properties": {"name": {"const": function["name"]},
                       "arguments": function.get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for function in functions]
    schema = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
    more = ' ("\\n" call)*' if parallel else ""
    return (f"start: call{more}\n"
            f'call: "{OPEN}\\n" body "\\n{CLOSE}"\n'
            f"body: %json {json.dumps({'x-guidance': _JSON_STYLE, **schema})}\n")

