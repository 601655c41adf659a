"""One thread per loaded model owns its ``onnxruntime_genai.Engine``.

Why a thread: every Engine call must come from the thread that created the Engine, and
``Engine.run`` blocks for a whole scheduler step (it releases the GIL, so the event loop
keeps serving meanwhile). The owner thread takes new turns and cancellations from a
thread-safe inbox, runs steps while work is pending, detokenizes, and hands each step's
text to asyncio with one ``call_soon_threadsafe`` per event loop per step, not one per
token.

How turns are scheduled on it, and why the worker keeps its own admission queue, is
inference/batching.py; a turn and its results are inference/turns.py.

How many turns wait is counted on the event loop too (:attr:`EngineWorker.queued`): the
engine thread's own figures lag by up to a step, and a bound on the queue checked against
them would let a burst of requests all pass. A request takes its places when it is
accepted, before it is admitted; each place is given back when the engine reports the
turn begun (one notice per batch formed) or finished, or by the request if it never
submits the turn.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import queue
import threading
import time
from pathlib import Path

import numpy as np

from inference.arrivals import after_pending_reads, arrivals
from inference.batching import _RESTARTS_PER_TURN, ContinuousBatching, _first_line
from inference.chat_template import ChatTemplateLoadError, PromptFormat, template_text
from inference.decoding import TokenDecoder
from inference.grammar import GrammarCheck
from inference.model_folder import ModelLoadError, check_model_folder, effective_context, folder_context
from inference.model_options import ModelOptions
from inference.reasoning import resolve_parser
from inference.tool_parsers import ToolParsing, UnknownToolParser, select_tool_parser
from inference.turns import (GRAMMAR_FAILURE, REFUSED, RETRYABLE_FAILURE, SHUTTING_DOWN, EngineStats,
                             EngineUnavailable, Finish, SamplingParams, Turn, Usage)

# Names other modules import from here, defined in the modules the engine is made of.
__all__ = [
    "EngineUnavailable", "EngineWorker", "Finish", "GRAMMAR_FAILURE", "ModelLoadError", "REFUSED", "RETRYABLE_FAILURE",
    "SHUTTING_DOWN", "SamplingParams", "Turn", "Usage", "after_pending_reads", "arrivals", "folder_context",
]

log = logging.getLogger("llmserver.engine")


class EngineWorker(ContinuousBatching):
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
        # The fewest session tokens a request may have: a model with sliding-window
        # attention refuses a cache shorter than its window. Set at load.
        self.least_session_tokens = 1
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

    def hold_places(self, turns: list[Turn]) -> None:
        """Count ``turns`` among the queued from now on (on the event loop), before they
        are submitted: a request's places are taken when it is accepted."""
        for turn in turns:
            if not turn._holds_place:
                turn._holds_place = True
                self.queued += 1

    def release_place(self, turn: Turn) -> None:
        """The place of a turn holding one that will never be submitted (its request was
        refused or its client left first); nothing for a submitted one."""
        if not turn._submitted:
            self._free_place(turn)

    def _free_place(self, turn: Turn) -> None:
        if turn._holds_place:
            turn._holds_place = False
            self.queued -= 1

    def submit(self, turn: Turn) -> None:
        self.hold_places([turn])
        with self._accepting:
            if not self.running:
                self._free_place(turn)
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
        window = genai_config["model"].get("decoder", {}).get("sliding_window") or {}
        self.least_session_tokens = min(self.context_length, int(window.get("window_size") or 1))
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
