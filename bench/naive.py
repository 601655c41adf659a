"""The baseline ``make bench`` beats: the original plan's design, one ``og.Generator``
per request, requests served one at a time.

The server runs it instead of the Engine when ``ENGINE_WORKER_CLASS=bench.naive.GeneratorWorker``
(benchmarks only), so the baseline sits behind exactly the same HTTP front, keys,
limits and accounting as the real server: only the generation differs. One thread
owns the model (as the Engine's does); it takes one request at a time from the queue,
creates a Generator for it, generates token by token and hands each token to asyncio
as it comes (one thread hop per token, as a per-request generator loop does).
Cancellation is honoured between tokens. Guidance (tools, JSON) is passed to the
Generator's params too, so every request the server accepts still works.
"""

from __future__ import annotations

import queue

import numpy as np

from inference.engine import EngineWorker, Finish, Usage


class GeneratorWorker(EngineWorker):
    """Same interface and stats as :class:`inference.engine.EngineWorker`; no batching."""

    def _new_engine(self) -> None:
        self._fault = False  # no Engine: one Generator per request

    def _learn_scheduler(self, dynamic_configured: bool) -> None:
        self.batch_limit = 1  # one request at a time

    def _loop(self) -> None:
        inbox = self._inbox
        while True:
            if not self._waiting:
                command = inbox.get()
            else:
                try:
                    command = inbox.get_nowait()
                except queue.Empty:
                    command = None
            while command is not None:
                if command[0] == "stop":
                    self._fail_all("the server is shutting down")
                    self.state = "stopped"
                    return
                self._handle(command)
                try:
                    command = inbox.get_nowait()
                except queue.Empty:
                    command = None
            if self._waiting:
                self._generate(self._waiting.popleft())

    def _cancel_requested(self, turn) -> bool:
        """Drain the inbox between tokens: new requests queue up, a cancel of ``turn`` stops it."""
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return turn._cancelled
            if command[0] == "stop":
                self._inbox.put(command)  # handled by the loop once this request ends
                return True
            self._handle(command)

    def _generate(self, turn) -> None:
        og = self._og
        params = turn.params
        prompt = turn.prompt_tokens
        stats = self.stats
        stats.turns_started += 1
        stats.running = stats.peak_batch = 1
        stats.waiting = len(self._waiting)
        gp = og.GeneratorParams(self._model)
        options = {"max_length": min(self.context_length, len(prompt) + params.max_tokens)}
        if params.temperature <= 0:
            options["do_sample"] = False  # greedy, whatever the model's search block says
        else:
            options.update(do_sample=True, temperature=params.temperature)
            if params.top_p is not None:
                options["top_p"] = params.top_p
            if params.top_k is not None:
                options["top_k"] = params.top_k
        gp.set_search_options(**options)
        stream = self.tokenizer.create_stream()
        eos = set(int(t) for t in np.atleast_1d(self.tokenizer.eos_token_ids))
        reason, error = "MAX_GENERATED_TOKENS", None
        try:
            if params.guidance is not None:
                gp.set_guidance(*params.guidance)
            if len(prompt) >= self.context_length:
                raise RuntimeError(f"the prompt ({len(prompt)} tokens) leaves no room before max_session_tokens "
                                   f"({self.context_length})")
            generator = og.Generator(self._model, gp)
            generator.append_tokens(np.asarray(prompt, dtype=np.int32))
            while len(turn._generated) < params.max_tokens:
                if self._fault:
                    self._fault = False
                    raise RuntimeError("injected engine fault")
                if self._cancel_requested(turn):
                    reason = "CANCELLED"
                    break
                if generator.is_done():
                    reason = "MAX_SESSION_TOKENS"
                    break
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                stats.steps += 1
                if token in eos:  # not in the usage: the Engine does not count EOS either
                    reason = "EOS"
                    break
                turn._generated.append(token)
                stats.tokens_generated += 1
                self._post([(turn, stream.decode(token), 1, None)])
            del generator
        except RuntimeError as exc:
            reason, error = "FAILED", str(exc)
        stats.turns_finished += 1
        stats.running = 0
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(turn._generated))
        self._post([(turn, "", 0, Finish(reason, usage, error))])
