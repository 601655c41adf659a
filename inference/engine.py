"""One thread per loaded model owns its ``onnxruntime_genai.Engine``.

Why a thread: every Engine call must come from the thread that created the Engine, and
``Engine.run`` blocks for a whole scheduler step (it releases the GIL, so the event loop
keeps serving meanwhile). The owner thread takes new turns and cancellations from a
thread-safe inbox, runs steps while work is pending, detokenizes, and hands each step's
text to asyncio with one ``call_soon_threadsafe`` per event loop per step, not one per
token.

Why our own admission queue: on CPU the Engine's scheduler is *static*: a batch forms
when the engine is idle, and a request submitted while it runs waits until every
sequence in it has finished, even with free slots (measured: a newcomer waited 26 steps
beside a lone running turn). The worker therefore keeps waiting turns itself and makes
batching continuous by *re-forming* the batch: it cancels the running turns and begins
them again, each with its prompt plus the tokens generated so far (recompute preemption,
as vLLM does it), together with the newcomers. Re-prefilling costs time, so a re-form
happens only once the oldest waiter has waited as long as the re-prefill is expected to
take (the ski-rental rule: never more than twice the better choice in hindsight). For a
small model the re-prefill is nearly free and newcomers join within a step or two.

On the asyncio side a :class:`Turn` accumulates text until its consumer wakes up, so a
consumer slower than the engine receives several tokens in one piece and the first token
is never held back.

How many turns wait is counted on the event loop too (:attr:`EngineWorker.queued`): the
engine thread's own figures lag by up to a step, and a bound on the queue checked against
them would let a burst of requests all pass. A request takes its places when it is
accepted, before it is admitted; each place is given back when the engine reports the
turn begun (one notice per batch formed) or finished, or by the request if it never
submits the turn.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.chat_template import ChatTemplateLoadError, PromptFormat, template_text
from inference.decoding import TokenDecoder
from inference.grammar import GrammarCheck
from inference.model_options import ModelOptions
from inference.reasoning import resolve_parser
from inference.tool_parsers import ToolParsing, UnknownToolParser, select_tool_parser

log = logging.getLogger("llmserver.engine")

# og.EngineEventFlags, as plain ints for cheap bit tests on the hot path.
_TOKEN = 1
_TURN_FINISHED = 2
_CAPACITY_BLOCKED = 4
_FAILED = 8
_RETRYABLE = 16

# How often one turn that had produced nothing may be begun again in a new Engine after
# the one it was in failed as a whole: a turn that keeps failing engines is not retried
# for ever.
_RESTARTS_PER_TURN = 2

# How often one turn that had produced nothing may be begun again after a dynamic-batching
# engine failed it as retryable (no capacity for it at the time).
_RETRIES_PER_TURN = 3

# A new batch waits for requests read but not yet at the engine at most this long after
# the last of them arrived, or this share of the prefill its waiting turns will take
# anyway, whichever is longer; and never longer than _GATHER_CAP from the first. A view
# takes ~1.5 ms per request on the benchmark model, more on a busy CPU (admissions go
# one at a time); a prompt's prefill ~300 ms.
_GATHER_SECONDS = 0.02
_GATHER_SHARE_OF_PREFILL = 0.05
_GATHER_CAP = 0.2

# The error of turns ended because the server stops (inference.serving maps it to 503).
SHUTTING_DOWN = "the server is shutting down"
# The error of a turn whose request the Engine refused to create (inference.serving
# maps it to a 500: the model's configuration, not the request, is at fault).
REFUSED = "the engine refused to begin the turn"
# og's words for an Engine that refuses every call after a failed step.
_UNHEALTHY = "no longer healthy"
# The error of a constrained turn that had produced nothing when its Engine failed
# (inference.serving maps it to a 400 naming the grammar's parameter).
GRAMMAR_FAILURE = "the engine failed while following this grammar"
# The start of the error of a turn a dynamic-batching engine failed as retryable
# (inference.serving maps it to a 503 with Retry-After): a later attempt may succeed.
RETRYABLE_FAILURE = "the engine had no capacity for the turn"


class ModelLoadError(Exception):
    """The model folder cannot be served; the message names the path and the cause."""


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
    _queued: bool = False
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


def check_model_folder(path: str) -> None:
    """Fail with one clear line when a folder cannot be an ONNX Runtime GenAI model."""
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"model path {path} is not a folder")
    config = folder / "genai_config.json"
    if not config.is_file():
        raise ModelLoadError(f"model folder {path} has no genai_config.json (not an ONNX Runtime GenAI model folder)")
    try:
        decoder = json.loads(config.read_text())["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{config} is not a valid genai_config.json ({exc!r})") from None
    filename = decoder.get("filename")
    if filename and not (folder / filename).is_file():
        raise ModelLoadError(f"model folder {path} is missing {filename}, named in genai_config.json")
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(f"model folder {path} has no tokenizer.json")


class Arrivals:
    """Generation requests this process has read and that have not yet taken their places
    in a model's queue (``EngineWorker.reserve``): counted on the event loop from the
    moment Daphne has the whole request (``llmserver.handlers.CountArrivals``), read by
    the engine threads when they decide whether a new batch waits for more
    (``EngineWorker._gathering``).

    Counted any later, the engine saw only requests already past authentication,
    validation and tokenization, and the first of a burst began a batch alone while the
    others were still being read (measured on the benchmark model, 8 clients sending at
    once: a batch of 1 or 2, then the rest, in half the runs)."""

    def __init__(self):
        self.count = 0

    def arrive(self):
        """Count one request; returns the function that stops counting it (idempotent):
        called when it takes its places, or when it ends without."""
        self.count += 1
        counted = True

        def placed() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.count -= 1

        return placed


arrivals = Arrivals()


async def after_pending_reads() -> None:
    """Return once the event loop has run the callbacks of the sockets that were readable
    when this was called (and so counted the requests they complete, :class:`Arrivals`).

    One ``sleep(0)`` is not enough: an iteration runs the callbacks already scheduled
    (this coroutine's wake-up among them) before those of the sockets it polled, so the
    second iteration is the first in which this coroutine resumes after them."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class EngineWorker:
    """Owns one model's Engine on a dedicated daemon thread."""

    def __init__(self, model_id: str, path: str, *, max_batch_size: int, step_delay: float = 0.0,
                 options: dict | None = None, model_options: ModelOptions | None = None):
        self.model_id = model_id
        self.path = path
        self.max_batch_size = max_batch_size
        self.options = options or {}  # merged into genai_config.json at load
        self.model_options = model_options or ModelOptions()
        # Seconds of sleep before each step: lets tests see generations in flight on a
        # model as fast as the demo one. Always 0 in production.
        self.step_delay = step_delay
        self.stats = EngineStats()
        self.state = "stopped"  # loading → running → stopped | failed
        self.error: str | None = None
        self.context_length = 0  # the effective context (effective_context), set at load
        self.vocab_size = 0
        # The model's own sampling settings (genai_config.json "search" as the engine
        # options overlay it), which inference.serving may use as a request's defaults.
        self.search_defaults: dict = {}
        # Whether the Engine schedules with dynamic batching (a paged KV cache, GPU
        # builds): turns join it at any step, and it takes per-turn seeds.
        self.dynamic_batching = False
        self.batch_limit = max_batch_size  # measured at load: sequences one step serves
        self.tokenizer = None  # og.Tokenizer; its encode/decode may be called from any thread
        self.token_decoder: TokenDecoder | None = None  # generated tokens to text (engine thread)
        self.tool_parsing: ToolParsing | None = None  # how its tool calls are written; None: not read
        self.prompt_format: PromptFormat | None = None  # chat template and BOS, read at load
        self.grammar: GrammarCheck | None = None  # checks a turn's grammar before it is submitted
        # How its chat output separates reasoning from the answer (inference.reasoning), or
        # None: all of it is the answer. Read off its chat template at load for "auto".
        self.reasoning_parser: str | None = None
        # Turns taken in and not yet begun nor finished, counted on the event loop (see
        # the module docstring): what a bound on waiting requests is checked against.
        self.queued = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Held while a turn is put in the inbox and while the owner thread stops taking
        # them: a turn is either refused by submit() or seen by the thread, never stranded
        # in the inbox of a thread that has ended.
        self._accepting = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # Owner-thread state:
        self._running: dict[object, Turn] = {}  # og.Request -> Turn
        self._waiting: collections.deque[Turn] = collections.deque()
        self._prefill_seconds_per_token = 0.0  # measured; 0 until the first batch forms
        self._step_seconds = 0.0  # a decode step's seconds, measured
        self._tokens_to_prefill = 0  # begun since the last step: the next step prefills them
        self._reforming = False  # running turns are being cancelled to begin again
        self._gather_since: float | None = None  # when the batch being gathered began to wait
        self._gather_last = 0.0  # when the latest turn of that batch arrived

    # --- control, from any thread ------------------------------------------------------

    def start(self, timeout: float = 300.0) -> None:
        """Load the model on the owner thread; raise ModelLoadError if it cannot be served."""
        check_model_folder(self.path)
        options = self.model_options
        # How its output is read (tool calls, reasoning): known before the weights load,
        # so that a misnamed parser fails at once.
        try:
            self.tool_parsing = select_tool_parser(self.path, options.tool_parser, options.chat_template)
            self.reasoning_parser = resolve_parser(options.reasoning_parser,
                                                   template_text(self.path, options.chat_template))
        except (UnknownToolParser, ValueError, ChatTemplateLoadError) as exc:
            raise ModelLoadError(f"model {self.model_id} ({self.path}): {exc}") from None
        log.info("model %s: tool calls read as %s", self.model_id,
                 self.tool_parsing.name if self.tool_parsing else "nothing (tool_parser none or no known format)")
        self.state = "loading"
        self._thread = threading.Thread(target=self._main, name=f"engine:{self.model_id}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ModelLoadError(f"model {self.path} did not load within {timeout:.0f}s")
        if self.state != "running":
            raise ModelLoadError(f"model folder {self.path} failed to load: {self.error}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread and self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running" and self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """No turn running or waiting, as the engine thread last wrote it (a step behind
        at most): a turn submitted now begins a new batch."""
        return self.stats.running == 0 and self.stats.waiting == 0

    def reserve(self, turns: list[Turn]) -> None:
        """Count ``turns`` as waiting from now on (on the event loop), before they are
        submitted: a request's places are taken when it is accepted."""
        for turn in turns:
            if not turn._queued:
                turn._queued = True
                self.queued += 1

    def give_back(self, turn: Turn) -> None:
        """The place of a reserved turn that will never be submitted (its request was
        refused or its client left first); nothing for a submitted one."""
        if not turn._submitted:
            self._unqueue(turn)

    def _unqueue(self, turn: Turn) -> None:
        if turn._queued:
            turn._queued = False
            self.queued -= 1

    def submit(self, turn: Turn) -> None:
        self.reserve([turn])
        with self._accepting:
            if not self.running:
                self._unqueue(turn)
                raise EngineUnavailable(f"the engine for model '{self.model_id}' is {self.state}")
            turn._submitted = True
            self._inbox.put(("begin", turn))

    def seconds_to_begin(self, turns: int) -> float:
        """Roughly how long until ``turns`` waiting turns have all begun, from the pace
        measured so far: a batch of ``batch_limit`` turns at a time, each batch lasting as
        many steps as an average turn generates tokens. 0 before anything finished."""
        stats = self.stats
        if not stats.turns_finished:
            return 0.0
        steps_per_turn = stats.tokens_generated / stats.turns_finished
        batches = math.ceil(turns / self.batch_limit)
        return batches * steps_per_turn * (self._step_seconds + self.step_delay)

    def cancel(self, turn: Turn) -> None:
        """End a turn now (client gone, stop sequence seen). Its finish arrives as usual,
        with reason CANCELLED and the usage so far; its batch slot is free at once."""
        if turn.finish is None:
            self._inbox.put(("cancel", turn))

    def inject_fault(self) -> None:
        """Make the next engine step raise, as a crash inside the engine would (tests)."""
        self._inbox.put(("fault", None))

    # --- the owner thread ------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:  # the message goes to start()'s caller
            self.error = _first_line(exc)
            self.state = "failed"
            self._ready.set()
            return
        self.state = "running"
        self._ready.set()
        log.info(
            "model %s loaded from %s (batch size %d, context %d, reasoning parser %s)",
            self.model_id, self.path, self.max_batch_size, self.context_length, self.reasoning_parser or "none",
        )
        try:
            self._loop()
        except Exception:
            log.exception("engine thread for %s died", self.model_id)
            self._stop_accepting("failed")
            self._fail_all("the engine stopped")
        finally:
            if self.state == "running":
                self.state = "stopped"

    def _stop_accepting(self, state: str) -> None:
        """From now on submit() refuses; the turns it took before are moved from the inbox
        to the waiting queue, for the caller to end with the rest."""
        with self._accepting:
            self.state = state
        self._take_late_arrivals()

    def _load(self) -> None:
        import onnxruntime_genai as og

        genai_config = json.loads((Path(self.path) / "genai_config.json").read_text())
        self.context_length = effective_context(genai_config, self.options, self.max_model_len)
        self.search_defaults = {**genai_config.get("search", {}), **self.options.get("search", {})}
        config = og.Config(self.path)
        if self.options:
            config.overlay(json.dumps(self.options))
        # The engine sizes a sequence's cache by its session tokens, whose default and
        # bound is search.max_length: set to the effective context, a model exported with
        # a 128k context costs what max_model_len allows, also for requests made without
        # RequestOptions (_measure_batch_limit's).
        config.overlay(json.dumps({"search": {"max_length": self.context_length}}))
        # A model exported with paged attention has an engine.dynamic_batching section
        # (its batch size among its settings). Given a static_batching section beside it,
        # og made a static Engine, so none is added to such a model.
        engine_section = {**genai_config.get("engine", {}), **self.options.get("engine", {})}
        dynamic_configured = "dynamic_batching" in engine_section and "static_batching" not in engine_section
        if not dynamic_configured:
            config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": self.max_batch_size}}}))
        self._og = og
        self._execution_failure = og.EngineErrorCode.ENGINE_EXECUTION_FAILURE
        self._model = og.Model(config)
        self.tokenizer = og.Tokenizer(self._model)
        self.token_decoder = TokenDecoder(self.tokenizer, self.path)
        self.prompt_format = PromptFormat.load(self.model_id, self.path, self.model_options.chat_template)
        self.vocab_size = int(genai_config["model"]["vocab_size"])
        self.grammar = GrammarCheck(self.path, self.vocab_size, list(self.tokenizer.eos_token_ids))
        self._new_engine()
        self._learn_scheduler(dynamic_configured)
        if self.batch_limit < self.max_batch_size:
            log.warning(
                "model %s: the engine serves at most %d sequences per step on this build "
                "(MAX_BATCH_SIZE=%d asked); admitting %d at a time",
                self.model_id, self.batch_limit, self.max_batch_size, self.batch_limit,
            )

    @property
    def max_model_len(self) -> int:
        """The configured bound on the context (ModelOptions.max_model_len, else the
        MAX_MODEL_LEN setting)."""
        if self.model_options.max_model_len is not None:
            return self.model_options.max_model_len
        from django.conf import settings

        return settings.MAX_MODEL_LEN

    def _learn_scheduler(self, dynamic_configured: bool) -> None:
        """Set :attr:`dynamic_batching` and :attr:`batch_limit` from the new Engine.

        The static scheduler reports max_scheduled_tokens 0; og refuses a dynamic
        configuration with 0 there. An Engine made from a dynamic_batching section (og
        fails to make one of a model without paged attention) is dynamic too. A
        dynamic-batching Engine takes new turns at any step, so its configured size is
        what it serves; the static one is measured."""
        capabilities = self._engine.get_capabilities()
        self.dynamic_batching = capabilities.max_scheduled_tokens > 0 or dynamic_configured
        if self.dynamic_batching:
            self.batch_limit = int(capabilities.configured_max_batch_size) or self.max_batch_size
        else:
            self.batch_limit = self._measure_batch_limit()

    def _measure_batch_limit(self) -> int:
        """How many sequences one engine step really serves.

        The CPU static scheduler of onnxruntime-genai 0.18 reports the configured
        max_batch_size in its capabilities but was seen serving 4 per step whatever the
        setting; turns beyond that wait for the whole batch to finish. Admission must use
        the real figure, so measure it: begin max_batch_size one-token turns and count the
        turns the first step served."""
        og = self._og
        token = np.asarray(self.tokenizer.encode("a")[:1], dtype=np.int32)
        requests = []
        for _ in range(self.max_batch_size):
            request = self._engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(1)
            request.begin_turn(token, options)
            requests.append(request)
        # Every turn the step served has an event: a token, or its finish if the model
        # ended it at once with EOS.
        served = len({id(event.request) for event in self._engine.run(self._buffer)})
        while self._engine.has_pending_requests():
            self._engine.run(self._buffer)
        for request in requests:
            request.close()
        return max(1, min(served, self.max_batch_size))

    def _restart(self, cause: str) -> None:
        """Replace an Engine that failed as a whole, and decide for each turn it held.

        A turn whose tokens reached its client ends with FAILED (the client has part of an
        answer and learns it is cut). A turn that has produced nothing begins again in the
        new Engine, ahead of the waiting ones, so its client sees no failure at all,
        unless it is constrained (its grammar is the likeliest cause: constrained turns
        are the ones that reach the grammar compiler inside the batched step) or has
        begun again too often already. Waiting turns are untouched; they begin there."""
        self.stats.restarts += 1
        ended, again = [], []
        for turn in self._close_running():
            if turn._cancelled:
                ended.append((turn, "", 0, Finish("CANCELLED", self._usage(turn))))
            elif turn._generated or turn.params.guidance is not None or turn._restarts >= _RESTARTS_PER_TURN:
                error = GRAMMAR_FAILURE if turn.params.guidance is not None and not turn._generated else None
                ended.append((turn, "", 0, Finish("FAILED", self._usage(turn), error or f"engine failure: {cause}")))
            else:
                turn._restarts += 1
                again.append(turn)
        self._waiting.extendleft(reversed(again))
        self._reforming = False
        self._tokens_to_prefill = 0
        self.stats.turns_finished += len(ended)
        self.stats.running = 0
        self.stats.waiting = len(self._waiting)
        if ended:
            self._post(ended)
        self._new_engine()

    def _failure_cause(self) -> str:
        """Why og considers the Engine failed: it says so when asked for a request."""
        try:
            self._engine.create_request().close()
        except RuntimeError as exc:
            return _first_line(exc)
        return "unknown"

    def _new_engine(self) -> None:
        self._engine = self._og.Engine(self._model)
        self._buffer = self._engine.create_event_buffer(max(256, 4 * self.max_batch_size))
        self._fault = False

    def _loop(self) -> None:
        inbox = self._inbox
        while True:
            idle = not self._running and not self._waiting
            gathering = self._gathering()
            # Idle: sleep until work arrives. Gathering a batch: wait for the rest of it a
            # moment. Busy: take whatever is queued, then step.
            try:
                if idle:
                    command = inbox.get()
                elif gathering:
                    command = inbox.get(timeout=gathering)
                else:
                    command = inbox.get_nowait()
                while True:
                    if command[0] == "stop":
                        self._stop_accepting("stopped")
                        self._fail_all(SHUTTING_DOWN)
                        return
                    self._handle(command)
                    command = inbox.get_nowait()
            except queue.Empty:
                pass
            try:
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:
                # og refuses every call on an Engine whose batched step failed; whatever
                # raised, the turns go on in a new one (a failure there ends the thread).
                log.exception("engine step failed for model %s; restarting the engine", self.model_id)
                self._restart(_first_line(exc))

    def _take_late_arrivals(self) -> None:
        """Turns submitted just before the thread stops taking them, still in the inbox:
        into the waiting queue, so that they end with the rest instead of never."""
        while True:
            try:
                kind, turn = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "begin":
                self._waiting.append(turn)

    def _handle(self, command) -> None:
        kind, turn = command
        if kind == "begin":
            turn._queued_at = self._gather_last = time.monotonic()
            self._waiting.append(turn)
        elif kind == "cancel":
            turn._cancelled = True
            if turn._request is not None:
                try:
                    turn._request.cancel_turn(turn._turn_id)
                except RuntimeError as exc:  # the turn ends anyway; its finish event says how
                    log.warning("model %s: cancelling a turn failed: %s", self.model_id, _first_line(exc))
            elif turn in self._waiting:
                self._waiting.remove(turn)
                self._post([(turn, "", 0, Finish("CANCELLED", self._usage_so_far(turn)))])
        elif kind == "fault":
            self._fault = True
        self.stats.waiting = len(self._waiting)

    # Admission: continuous batching on a static scheduler (see the module docstring).

    def _admit(self) -> None:
        if not self._waiting or (self._reforming and self._running):
            return  # nothing to admit, or a re-form is still cancelling its turns
        if self.dynamic_batching or not self._running:
            if not self._reforming and self._gathering():
                return  # more of this batch is on its way (see _gathering)
            self._reforming = False
            self._gather_since = None
            begun = []
            while self._waiting and len(self._running) < self.batch_limit:
                turn = self._waiting.popleft()
                new = turn._stream is None
                self._tokens_to_prefill += self._begin(turn)
                if new and turn._request is not None:
                    begun.append(turn)
            self.stats.waiting = len(self._waiting)
            self._post_begun(begun)
        elif len(self._running) < self.batch_limit and not self.dynamic_batching and self._reform_pays_off():
            self._reform()

    def _gathering(self) -> float:
        """Seconds to hold a new batch back for the requests still on their way to it, or 0.

        A batch forms when the engine is idle, and stays as formed until it ends (or pays
        for a re-form). Requests that arrive together over HTTP reach the engine a few
        milliseconds apart (parsing, admission), so the first would begin alone and the
        others wait for it. When the event loop has accepted more turns than have reached
        the engine (``queued``), or has read requests that have not taken their places yet
        (``arrivals``), and the batch has room, the engine waits for them:
        at most ``_GATHER_SECONDS`` or ``_GATHER_SHARE_OF_PREFILL`` of the prefill of the
        turns waiting, whichever is longer, after the latest of them arrived (admissions
        go one at a time, slower on a busy CPU), but not past ``_GATHER_CAP`` from the
        first; a lone request never waits. A request going to
        an idle engine lets the event loop read its sockets first (``after_pending_reads``
        in ``Generation.updates``), so that requests sent together are all counted by then."""
        if self._running or not self._waiting or len(self._waiting) >= self.batch_limit:
            return 0.0
        arrived = sum(1 for turn in self._waiting if turn._stream is None)  # new, not resumed
        if self.queued + arrivals.count <= arrived:
            return 0.0
        now = time.monotonic()
        if self._gather_since is None:
            self._gather_since = now
        prefill = self._prefill_seconds_per_token * sum(len(turn.prompt_tokens) for turn in self._waiting)
        most = max(_GATHER_SECONDS, _GATHER_SHARE_OF_PREFILL * prefill)
        until = min(max(self._gather_since, self._gather_last) + most, self._gather_since + max(most, _GATHER_CAP))
        return max(0.0, until - now)

    def _reform_pays_off(self) -> bool:
        """Re-form only when both hold:

        - the oldest newcomer has waited as long as the re-prefill would take (the
          ski-rental rule: arrivals close together are taken in one re-form, not one each);
        - waiting for the batch to end would idle more slot-steps than the re-prefill
          stalls: the slots free now, and those freed as shorter turns end, stay empty
          until the longest running turn reaches its max_tokens (an upper bound: EOS may
          come first), while a re-form stalls every running turn for the re-prefill.
          Without this, turns resumed with different amounts left finish apart, and the
          batch re-forms again and again (measured on the 360M benchmark model, where a
          prompt token costs ~4 ms to prefill: 7 re-forms per 16 requests, 40% of the
          throughput lost).
        """
        # A constrained turn cannot begin again mid-way: its grammar would start over
        # after the tokens it already generated. Newcomers wait for it to end instead.
        running = self._running.values()
        if any(turn.params.guidance is not None for turn in running):
            return False
        to_prefill = sum(len(t.prompt_tokens) + len(t._generated) for t in running)
        reprefill_seconds = to_prefill * self._prefill_seconds_per_token
        if time.monotonic() - self._waiting[0]._queued_at < reprefill_seconds:
            return False
        if self._step_seconds <= 0:
            return True  # no decode step measured yet: the re-prefill wait above decides alone
        left = [t.params.max_tokens - len(t._generated) for t in running]
        longest = max(left)
        free = min(self.batch_limit - len(left), len(self._waiting))
        idle_if_waiting = free * longest + sum(longest - n for n in left)
        stalled_if_reforming = len(left) * reprefill_seconds / self._step_seconds
        return idle_if_waiting > stalled_if_reforming

    def _reform(self) -> None:
        """Cancel every running turn; each begins again (prompt + its tokens so far) with
        the newcomers once the cancellations are through, at the next admission."""
        self._reforming = True
        for request, turn in self._running.items():
            if not turn._cancelled:
                turn._resuming = True
                request.cancel_turn(turn._turn_id)
        self.stats.reforms += 1

    def _begin(self, turn: Turn) -> int:
        """Begin ``turn`` in the engine; return the number of tokens to prefill."""
        og = self._og
        params = turn.params
        tokens = turn.prompt_tokens
        if turn._generated:  # resumed after a re-form
            tokens = np.concatenate([tokens, np.asarray(turn._generated, dtype=np.int32)])
            self.stats.reprefilled_tokens += len(tokens)
        try:
            options = og.RequestOptions()
            options.set_max_session_tokens(self.context_length)
            request = self._engine.create_request(options=options)
        except Exception as exc:
            if _UNHEALTHY in str(exc) and turn._restarts < _RESTARTS_PER_TURN:
                # Not the turn's fault: the Engine no longer serves. It waits for the next
                # one (_restart), ahead of the others.
                turn._restarts += 1
                self._waiting.appendleft(turn)
                raise
            # This turn's request is refused: it fails alone, the Engine serves the next.
            self._ended_before_beginning(turn, f"{REFUSED}: {_first_line(exc)}")
            return 0
        try:
            turn_options = og.TurnOptions(request)
            turn_options.set_max_generated_tokens(params.max_tokens - len(turn._generated))
            self._set_sampling(turn_options, params)
            if params.guidance is not None:
                turn_options.set_guidance(*params.guidance)
            turn._turn_id = request.begin_turn(tokens, turn_options)
        except Exception as exc:
            # Whatever this turn asked that the engine will not do, it fails alone.
            request.close()
            self._ended_before_beginning(turn, str(exc) or type(exc).__name__)
            return 0
        turn._request = request
        turn._resuming = False
        if turn._stream is None:
            turn._stream = self.token_decoder.create_stream()
            self.stats.turns_started += 1
        self._running[request] = turn
        self.stats.running = len(self._running)
        return len(tokens)

    def _set_sampling(self, turn_options, params: SamplingParams) -> None:
        """Every sampling setting, explicitly: the model's ``search`` block is the default
        of any the turn leaves unset (do_sample true in Qwen and Llama exports would make
        temperature 0 sample; top_k 1 in Phi-3 exports makes sampling an error)."""
        if params.temperature <= 0:
            turn_options.set_do_sample(False)  # greedy, whatever the search block says
            return
        turn_options.set_do_sample(True)
        turn_options.set_temperature(params.temperature)
        turn_options.set_top_k(params.top_k or 0)  # 0: off
        turn_options.set_top_p(1.0 if params.top_p is None else params.top_p)
        if params.seed is not None:
            turn_options.set_seed(params.seed)

    def _ended_before_beginning(self, turn: Turn, error: str) -> None:
        if turn._stream is not None:  # a resumed turn that was counted as started
            turn._stream = None
            self.stats.turns_finished += 1
        self._post([(turn, "", 0, Finish("FAILED", self._usage(turn), error))])

    def _step(self) -> None:
        if self.step_delay:
            time.sleep(self.step_delay)
        started = time.perf_counter()
        if self._fault:
            raise RuntimeError("injected engine fault")
        events = self._run_engine()
        if any(int(event.flags) & _FAILED and event.error_code == self._execution_failure for event in events):
            # The batched step failed for every turn in it (a grammar the compiler gave
            # up on, say), and og now refuses every call on this Engine.
            log.error("engine step failed for model %s (%s); restarting the engine", self.model_id,
                      self._failure_cause())
            self._restart("the engine failed while generating")
            return
        self._learn_prefill_cost(time.perf_counter() - started)
        out = []
        tokens_this_step = 0
        for event in events:
            turn = self._running.get(event.request)
            if turn is None:
                continue
            flags = int(event.flags)
            if flags & _FAILED and flags & _RETRYABLE and self._retry(turn):
                continue
            if flags & _CAPACITY_BLOCKED and not flags & (_TOKEN | _TURN_FINISHED | _FAILED):
                continue  # the engine keeps the turn waiting for room: not a finish
            text = ""
            token_count = 0
            if flags & _TOKEN:
                token_count = 1
                token = int(event.token)
                turn._generated.append(token)
                text = turn._stream.decode(token)
            finish = None
            if flags & (_TURN_FINISHED | _FAILED):
                finish = self._finished(turn, event, flags)
            if token_count or finish:
                tokens_this_step += token_count
                out.append((turn, text, token_count, finish))
        stats = self.stats
        stats.steps += 1
        stats.tokens_generated += tokens_this_step
        if tokens_this_step > stats.peak_batch:
            stats.peak_batch = tokens_this_step
        stats.running = len(self._running)
        stats.waiting = len(self._waiting)
        if out:
            self._post(out)

    def _run_engine(self) -> list:
        """One scheduler step's events."""
        return self._engine.run(self._buffer)

    def _retry(self, turn: Turn) -> bool:
        """A turn the engine failed as retryable (a dynamic-batching engine out of room):
        begin it again, ahead of the waiting ones, if nothing of it was generated yet and
        it has not been retried too often; else False (it fails, as retryable)."""
        if turn._generated or turn._cancelled or turn._retries >= _RETRIES_PER_TURN:
            return False
        turn._retries += 1
        del self._running[turn._request]
        turn._request.close()
        turn._request = None
        self._waiting.appendleft(turn)
        turn._queued_at = time.monotonic()
        return True

    def _learn_prefill_cost(self, seconds: float) -> None:
        """The step after a batch forms does its prefill; keep a running estimate of the
        seconds one prompt token costs, and of a decode step's seconds, for the re-form rule."""
        tokens, self._tokens_to_prefill = self._tokens_to_prefill, 0
        if not tokens:
            old = self._step_seconds
            self._step_seconds = seconds if old == 0 else 0.9 * old + 0.1 * seconds
        else:
            sample = seconds / tokens
            old = self._prefill_seconds_per_token
            self._prefill_seconds_per_token = sample if old == 0 else 0.7 * old + 0.3 * sample

    def _finished(self, turn: Turn, event, flags: int) -> Finish | None:
        """Retire the turn; return its Finish, or None if it was re-formed and waits to
        begin again."""
        request = turn._request
        del self._running[request]
        request.close()
        turn._request = None
        usage = event.usage
        if usage is not None:
            turn._cached_tokens += int(usage.cached_prompt_tokens)
        reason = event.finish_reason.name
        if turn._resuming and reason == "CANCELLED" and not turn._cancelled:
            self._waiting.appendleft(turn)  # ahead of the newcomers: it was here first
            turn._queued_at = time.monotonic()
            turn._carried = len(turn._generated)
            return None
        turn._stream = None
        self.stats.turns_finished += 1
        error = None
        if flags & _FAILED or reason == "FAILED":
            reason = "FAILED"
            error = f"engine error {event.error_code.name}"
            if flags & _RETRYABLE:
                error = f"{RETRYABLE_FAILURE} ({event.error_code.name})"
        # The engine's own count for this segment, plus what earlier segments generated.
        generated = turn._carried + int(usage.generated_tokens) if usage is not None else len(turn._generated)
        return Finish(reason, self._usage(turn, generated), error)

    def _usage(self, turn: Turn, generated: int | None = None) -> Usage:
        return Usage(
            prompt_tokens=len(turn.prompt_tokens),
            completion_tokens=len(turn._generated) if generated is None else generated,
            cached_tokens=turn._cached_tokens,
        )

    def _fail_all(self, message: str) -> None:
        """End every running and waiting turn with FAILED and ``message`` (the thread is
        stopping)."""
        failed = [(turn, "", 0, Finish("FAILED", self._usage(turn), message)) for turn in self._close_running()]
        for turn in self._waiting:
            failed.append((turn, "", 0, Finish("FAILED", self._usage_so_far(turn), message)))
        self._waiting.clear()
        self.stats.running = self.stats.waiting = 0
        self.stats.turns_finished += len(failed)
        if failed:
            self._post(failed)

    def _close_running(self) -> list[Turn]:
        """Close every running turn's request (on an Engine that failed, closing may raise
        too) and return the turns, none running any more."""
        turns = list(self._running.values())
        for request, turn in self._running.items():
            try:
                request.close()
            except Exception:
                pass
            turn._request = None
        self._running.clear()
        return turns

    def _usage_so_far(self, turn: Turn) -> Usage:
        """A turn ended by the server: what it used, nothing if it never began (the
        engine read none of its prompt)."""
        return self._usage(turn) if turn._stream is not None else Usage()

    def _post(self, items: list) -> None:
        """Hand one step's results to asyncio: one thread hop per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for item in items:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, batch in by_loop.items():
            self._call_soon(loop, _deliver_all, self, batch)

    def _post_begun(self, turns: list[Turn]) -> None:
        """Tell asyncio these turns began (their places in the queue count are free):
        once per batch formed, not per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for turn in turns:
            by_loop.setdefault(turn.loop, []).append(turn)
        for loop, batch in by_loop.items():
            self._call_soon(loop, _began_all, self, batch)

    @staticmethod
    def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # that event loop is closed; nobody is waiting


def effective_context(genai_config: dict, options: dict, max_model_len: int) -> int:
    """The tokens one sequence may hold (prompt and answer): the smallest of
    ``max_model_len``, the model's ``context_length`` and its ``search.max_length`` as the
    engine options overlay it. The engine sizes each sequence's cache by it."""
    context = min(int(genai_config["model"]["context_length"]), max_model_len)
    max_length = {**genai_config.get("search", {}), **options.get("search", {})}.get("max_length")
    return min(context, int(max_length)) if max_length else context


def folder_context(path: str, options: dict, max_model_len: int) -> int | None:
    """:func:`effective_context` of a model folder not loaded, or None if its
    genai_config.json cannot be read."""
    try:
        return effective_context(json.loads((Path(path) / "genai_config.json").read_text()), options, max_model_len)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _first_line(exc: Exception) -> str:
    """An og error's first line (the rest can be a dump of the grammar parser's state)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _deliver_all(worker: EngineWorker, batch: list) -> None:
    for turn, text, tokens, finish in batch:
        if turn._queued:
            worker._unqueue(turn)
        turn._deliver(text, tokens, finish)


def _began_all(worker: EngineWorker, turns: list[Turn]) -> None:
    for turn in turns:
        turn.began = True
        worker._unqueue(turn)
