"""The demo model's chat format: its special tokens, its ChatML template with tools in the
Hermes style, and the same template rendered in Python (standard library only)."""

from __future__ import annotations

import json
from typing import Sequence

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 in the trained tokenizer

# ChatML with tools in the "Hermes" style of Qwen2.5: the tools (OpenAI tool objects,
# each as ``tojson`` writes it) in a system block, after the system prompt if there is
# one; an assistant's tool calls as <tool_call> blocks holding {"name", "arguments"}
# (arguments as an object), separated by a newline; a tool's result as a "tool" turn.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n"
    "{% endif %}<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}</tools><|im_end|>\n"
    "{% endif %}{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    # The newline between calls is an expression: as text right after a block tag,
    # Jinja's trim_blocks (on in transformers' renderer) would remove it.
    "{% if message['tool_calls'] is defined %}{% for call in message['tool_calls'] %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}<tool_call>\n"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}\n"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


# ------------------------------------------------------------------ rendering

def _tojson(obj) -> str:
    """The template's ``tojson``: ``", "`` and ``": "``, keys in order, non-ASCII as is."""
    return json.dumps(obj, ensure_ascii=False)


def render_parts(messages: Sequence[dict], add_generation_prompt: bool = False,
                 tools: Sequence[dict] | None = None) -> list[tuple[str, int | None]]:
    """:data:`CHAT_TEMPLATE` rendered in pieces ``(text, index)``: ``index`` is the
    position in ``messages`` of the assistant message whose answer (content, tool calls
    and the closing ``<|im_end|>``) the piece is, None for prompt text."""
    parts: list[tuple[str, int | None]] = []
    if tools:
        head = f"{IM_START}system\n"
        if messages and messages[0]["role"] == "system":
            head += f"{messages[0]['content']}\n"
        head += "<tools>\n" + "".join(_tojson(tool) + "\n" for tool in tools) + f"</tools>{IM_END}\n"
        parts.append((head, None))
    for i, m in enumerate(messages):
        if tools and i == 0 and m["role"] == "system":
            continue
        body = m.get("content") or ""
        if "tool_calls" in m:
            body += "\n".join(tool_call_text(call["function"]["name"], call["function"]["arguments"])
                              for call in m["tool_calls"])
        if m["role"] == "assistant":
            parts += [(f"{IM_START}assistant\n", None), (body + IM_END, i), ("\n", None)]
        else:
            parts.append((f"{IM_START}{m['role']}\n{body}{IM_END}\n", None))
    if add_generation_prompt:
        parts.append((f"{IM_START}assistant\n", None))
    return parts


def render_chatml(messages: Sequence[dict], add_generation_prompt: bool = False,
                  tools: Sequence[dict] | None = None) -> str:
    """Python equivalent of :data:`CHAT_TEMPLATE` (with ``tools``, OpenAI tool objects,
    and assistant ``tool_calls`` whose arguments are objects)."""
    return "".join(text for text, _ in render_parts(messages, add_generation_prompt, tools))


def assistant_text(message: dict) -> str:
    """What the model writes for an assistant message (content, then its calls)."""
    text = message.get("content") or ""
    if "tool_calls" in message:
        text += "\n".join(tool_call_text(c["function"]["name"], c["function"]["arguments"])
                          for c in message["tool_calls"])
    return text


def tool_call_text(name: str, arguments: dict) -> str:
    """An assistant's call as the template writes it (and the model answers)::

        <tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris"}}
        </tool_call>
    """
    return f"<tool_call>\n{_tojson({'name': name, 'arguments': arguments})}\n</tool_call>"
