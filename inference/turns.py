"""A turn and what it carries between the event loop and its model's engine thread.

A :class:`Turn` is one generation as seen from asyncio. It accumulates text until its
consumer wakes up, so a consumer slower than the engine receives several tokens in one
piece and the first token is never held back. The engine thread (inference.engine,
inference.batching) writes its private fields and hands each step's text to the turn's
event loop; the event loop reads what was delivered.

The error texts below end turns; inference.serving maps each to an HTTP status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

# The error of turns ended because the server stops (inference.serving maps it to 503).
SHUTTING_DOWN = "the server is shutting down"
# The error of a turn whose request the Engine refused to create (inference.serving
# maps it to a 500: the model's configuration, not the request, is at fault).
REFUSED = "the engine refused to begin the turn"
# The error of a constrained turn that had produced nothing when its Engine failed
# (inference.serving maps it to a 400 naming the grammar's parameter).
GRAMMAR_FAILURE = "the engine failed while following this grammar"
# The start of the error of a turn a dynamic-batching engine failed as retryable
# (inference.serving maps it to a 503 with Retry-After): a later attempt may succeed.
RETRYABLE_FAILURE = "the engine had no capacity for the turn"


class EngineUnavailable(Exception):
    """The engine thread is not running (failed to load, stopped, or crashed)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    # Seeds the turn's sampling; only an engine with dynamic batching takes one
    # (EngineWorker.dynamic_batching), and inference.serving sends none otherwise.
    seed: int | None = None
    # Constrained decoding: (kind, grammar) for og's set_guidance, kind one of
    # "json_schema", "regex", "lark_grammar". The output is valid by construction.
    guidance: tuple[str, str] | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Finish:
    """How a turn ended: ``reason`` is the engine's FinishReason name (EOS,
    MAX_GENERATED_TOKENS, MAX_SESSION_TOKENS, CANCELLED, FAILED)."""

    reason: str
    usage: Usage
    error: str | None = None


@dataclass(eq=False)
class Turn:
    """One generation, as seen from asyncio.

    Created on the event loop; the engine thread schedules :meth:`_deliver` on that loop
    once per step. Text accumulates until the consumer calls :meth:`take`, so a consumer
    slower than the engine gets several tokens at once. ``wake`` is set on every delivery;
    the turns of one API request (``n`` > 1) share one event and one consumer.
    """

    prompt_tokens: np.ndarray
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    finish: Finish | None = None
    tokens: int = 0  # tokens delivered so far (the usage of a turn cut short)
    began: bool = False  # the engine has begun it (set on the event loop)
    _pieces: list[tuple[str, int]] = field(default_factory=list)  # (text, tokens) per delivery
    # Event-loop state: holds a place in its worker's queue count; handed to the engine.
    _holds_place: bool = False
    _submitted: bool = False
    # Engine-thread state, never touched from asyncio:
    _request: object = None
    _turn_id: int = -1
    _stream: object = None  # inference.decoding.DecodeStream, kept across re-forms
    _generated: list[int] = field(default_factory=list)
    _carried: int = 0  # tokens generated before the last re-form
    _cached_tokens: int = 0
    _cancelled: bool = False  # the client asked
    _resuming: bool = False  # cancelled by a re-form, to begin again
    _restarts: int = 0  # times begun again after its Engine failed
    _retries: int = 0  # times begun again after a retryable failure
    _queued_at: float = 0.0

    def take(self) -> str:
        """The text delivered since the last call."""
        return "".join(text for text, _ in self.take_pieces())

    def take_pieces(self) -> list[tuple[str, int]]:
        """What was delivered since the last call, one (text, tokens) a step: the text of
        each token apart (empty while a character is incomplete)."""
        pieces = self._pieces[:]
        self._pieces.clear()
        return pieces

    def _deliver(self, text: str, tokens: int, finish: Finish | None) -> None:
        if tokens:
            self.began = True
        self.tokens += tokens
        if text or tokens:
            self._pieces.append((text, tokens))
        if finish is not None:
            self.finish = finish
        self.wake.set()


@dataclass
class EngineStats:
    """Counters for /health and the tests, written only by the engine thread."""

    steps: int = 0
    tokens_generated: int = 0
    turns_started: int = 0
    turns_finished: int = 0
    running: int = 0  # turns begun in the engine
    waiting: int = 0  # turns queued for a slot
    peak_batch: int = 0  # most tokens produced by one scheduler step
    reforms: int = 0
    reprefilled_tokens: int = 0
    restarts: int = 0
