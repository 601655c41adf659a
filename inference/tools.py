"""A tool call as the API hands it over, and chat messages as a chat template receives
them. How each model family writes calls, and reading them out of its text, is
inference/tool_parsers.py; the tools themselves reach the model through its chat
template (``apply_chat_template(..., tools=...)``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def as_message_part(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def template_messages(messages: list[dict]) -> list[dict]:
    """Validated messages as a chat template receives them: an assistant's tool calls
    with their arguments as objects (as templates write them back with tojson)."""
    rendered = []
    for message in messages:
        out = {"role": message["role"], "content": message["content"]}
        for key in ("name", "tool_call_id", "reasoning_content"):
            if key in message:
                out[key] = message[key]
        if "tool_calls" in message:
            out["tool_calls"] = [{
                "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": _as_object(call["function"]["arguments"])},
            } for call in message["tool_calls"]]
        rendered.append(out)
    return rendered


def _as_object(arguments: str):
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
