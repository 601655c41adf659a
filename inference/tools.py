"""A tool call as the API hands it over. How each model family writes calls, and reading
them out of its text, is inference/tool_parsers.py; the tools themselves reach the model
through its chat template (inference/chat_template.py)."""

from __future__ import annotations

from dataclasses import dataclass

from inference.chat_template import new_tool_call_id


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def __post_init__(self):
        self.id = self.id or new_tool_call_id()  # 9 letters and digits: see inference.chat_template

    def as_message_part(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
