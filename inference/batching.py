"""The owner thread's scheduling: admission, re-forms, engine steps, and handing each
step's results to asyncio. :class:`ContinuousBatching` is mixed into
:class:`inference.engine.EngineWorker`, whose ``__init__`` makes the state these methods
share and which provides ``_restart``, ``_failure_cause`` and ``_free_place``; every method
here runs on the owner thread, except :func:`_deliver_all` and :func:`_began_all`, which
run on a turn's event loop.

Why our own admission queue: on CPU the Engine's scheduler is *static*: a batch forms
when the engine is idle, and a request submitted while it runs waits until every
sequence in it has finished, even with free slots (docs/architecture.md, step 5). The
worker therefore keeps waiting turns itself and makes batching continuous by
*re-forming* the batch: it cancels the running turns and begins them again, each with
its prompt plus the tokens generated so far (recompute preemption, as vLLM does it),
together with the newcomers. Re-prefilling costs time, so a re-form happens only once
the oldest waiter has waited as long as the re-prefill is expected to take (the
ski-rental rule: never more than twice the better choice in hindsight). For a small
model the re-prefill is nearly free and newcomers join within a step or two.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from inference.arrivals import arrivals
from inference.turns import REFUSED, RETRYABLE_FAILURE, Finish, SamplingParams, Turn, Usage

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
# anyway, whichever is longer; and never longer than _GATHER_CAP from the first: a view
# takes milliseconds per request, a real model's prompt hundreds to prefill
# (bench/README.md, "Batches gathered").
_GATHER_SECONDS = 0.02
_GATHER_SHARE_OF_PREFILL = 0.05
_GATHER_CAP = 0.2

# og's words for an Engine that refuses every call after a failed step.
_UNHEALTHY = "no longer healthy"


class ContinuousBatching:
    """The scheduling half of :class:`inference.engine.EngineWorker` (see the module
    docstring)."""

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
          batch re-forms again and again, which costs a model whose prefill is slow most
          of its throughput (bench/README.md).
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
            options.set_max_session_tokens(self._session_tokens(len(tokens), params.max_tokens - len(turn._generated)))
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

    def _session_tokens(self, prompt: int, max_tokens: int) -> int:
        """The tokens the turn's request may hold: on a static scheduler, its prompt and
        ``max_tokens``, one more for the end of sequence, within the context and no fewer
        than a sliding window needs. A static batch's cache is as long as its longest
        request's session, and beginning the batch costs in proportion: a request sized by
        the context takes longer to begin and prefill (bench/results/session-2026-12-04.md).
        A dynamic-batching engine's paged cache grows as it goes: the context."""
        if self.dynamic_batching:
            return self.context_length
        return min(self.context_length, max(prompt + max_tokens + 1, self.least_session_tokens))

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


def _first_line(exc: Exception) -> str:
    """An og error's first line (the rest can be a dump of the grammar parser's state)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _deliver_all(worker: ContinuousBatching, batch: list) -> None:
    for turn, text, tokens, finish in batch:
        if turn._holds_place:
            worker._free_place(turn)
        turn._deliver(text, tokens, finish)


def _began_all(worker: ContinuousBatching, turns: list[Turn]) -> None:
    for turn in turns:
        turn.began = True
        worker._free_place(turn)
