"""How one model is served, beyond its folder: set per model in MODELS_CONFIG, or by the
environment for the single MODEL_PATH model (``MAX_MODEL_LEN``, ``CHAT_TEMPLATE``,
``TOOL_PARSER``, ``REASONING_PARSER``, ``GENERATION_DEFAULTS``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelOptions:
    # The most tokens one sequence holds (prompt and answer): the effective context is the
    # smallest of this, the model's context_length and its search.max_length. The engine
    # sizes each sequence's cache by it. None: settings.MAX_MODEL_LEN.
    max_model_len: int | None = None
    # A Jinja file that replaces the model's own chat template (absolute, or relative to
    # the model folder).
    chat_template: str | None = None
    # How tool calls are read from the model's output: "auto" (from the chat template),
    # "none", or a parser's name (inference.tool_parsers).
    tool_parser: str = "auto"
    # How reasoning is separated from the answer: "auto" (from the chat template), "none",
    # or a parser's name (inference.reasoning).
    reasoning_parser: str = "auto"
    # Whether the model's own sampling settings (genai_config.json "search", copied from
    # its generation_config.json) fill in what a request leaves out. Off: a request that
    # names no temperature gets DEFAULT_TEMPERATURE, greedy at 0.
    generation_defaults: bool = False
