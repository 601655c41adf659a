"""A request's engine turns consumed as one stream of choice updates (:class:`Generation`),
and what becomes of the errors the engine ends a turn with."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from inference.engine import (GRAMMAR_FAILURE, REFUSED, RETRYABLE_FAILURE, SHUTTING_DOWN, EngineUnavailable,
                              EngineWorker, SamplingParams, Turn, Usage, after_pending_reads)
from inference.reasoning import ReasoningSplitter
from inference.stop import StopMatcher
from llmserver.errors import (APIError, ContextLengthExceeded, EngineError, EngineOverloaded, EngineUnavailableError,
                              InvalidValue, shutting_down)

# The engine's FinishReason names, as OpenAI's finish_reason.
_FINISH_REASONS = {
    "EOS": "stop",
    "STOP_STRING": "stop",
    "MAX_GENERATED_TOKENS": "length",
    "MAX_SESSION_TOKENS": "length",
}


@dataclass
class ChoiceUpdate:
    index: int
    text: str  # the answer (content); reasoning, when the model's is separated, never
    finish_reason: str | None = None
    reasoning: str = ""  # comes before any text of the same choice
class GenerationFailed(Exception):
    """The engine ended a turn with an error after the request was accepted."""

    def __init__(self, api_error: APIError):
        super().__init__(api_error.message)
        self.api_error = api_error


class Generation:
    """The engine turns of one API request (``n`` choices for each prompt), consumed as
    one stream of :class:`ChoiceUpdate`, with stop sequences applied per choice.

    Leaving :meth:`updates` early, by client disconnect (task cancelled), error or
    ``aclose()``, cancels every unfinished turn in its ``finally``, freeing its batch slot
    at the engine's next step.

    :meth:`hold_places` takes the turns' places in the model's queue before admission
    (503 past ``MAX_QUEUED_REQUESTS``); whoever accepted the request calls
    :meth:`release_places` when it ends, for turns that were never submitted.
    """

    def __init__(self, worker: EngineWorker, prompts: list[np.ndarray], params: SamplingParams,
                 *, n: int = 1, stop: list[str] | None = None,
                 reasoning: Callable[[], ReasoningSplitter | None] | None = None):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self.worker = worker
        self.n = n
        self.turns = [Turn(prompt, params, loop, wake) for prompt in prompts for _ in range(n)]
        self.finish_reasons: list[str | None] = [None] * len(self.turns)
        self.first_text_at: float | None = None  # perf_counter() of the first text out
        # The request field its guidance (constrained decoding) comes from, for errors.
        self.guidance_param = "response_format"
        self._wake = wake
        self._stop = stop or []
        # A reasoning model's output is split into reasoning and content (inference.reasoning)
        # before stop sequences and tool calls, which apply to the content alone. A turn's
        # splitter is None when its prompt switched thinking off or a grammar holds it.
        self.reasoning_model = reasoning is not None
        self._splitters = [reasoning() if reasoning else None for _ in self.turns]

    @property
    def began(self) -> bool:
        """Whether the engine has begun any of its turns (else a client that left cost
        nothing but the wait)."""
        return any(turn.began for turn in self.turns)

    def hold_places(self) -> None:
        """Count the turns as waiting for the model, or refuse the request at once with
        503 if the queue is full: a request waiting longer than clients wait helps no one.
        The ``n`` turns of a request count ``n``; a request with more turns than the bound
        is taken only into an empty queue."""
        worker, limit = self.worker, settings.MAX_QUEUED_REQUESTS
        queued = worker.queued
        if queued and queued + len(self.turns) > limit:
            wait = worker.seconds_to_begin(queued + len(self.turns))
            raise EngineOverloaded(
                f"The engine is currently overloaded: the model '{worker.model_id}' has {queued} generations "
                f"waiting for a slot, and takes at most {limit}. Please try again later.",
                headers={"Retry-After": str(min(_MAX_RETRY_AFTER, max(1, math.ceil(wait))))},
            )
        worker.hold_places(self.turns)

    async def check_grammar(self) -> None:
        """400 naming the parameter it comes from, for a grammar the engine could not
        follow (inference.grammar): checked alone, before it can reach the shared engine.
        A grammar checked before is judged from the cache, on the event loop."""
        guidance = self.turns[0].params.guidance
        if guidance is None:
            return
        check = self.worker.grammar
        seen, problem = check.known(*guidance)
        if not seen:
            problem = await asyncio.to_thread(check.verdict, *guidance)
        if problem:
            raise InvalidValue(f"The engine cannot follow this '{self.guidance_param}' schema: {problem}",
                               param=self.guidance_param)

    def release_places(self) -> None:
        for turn in self.turns:
            self.worker.release_place(turn)

    async def updates(self) -> AsyncIterator[ChoiceUpdate]:
        worker, turns = self.worker, self.turns
        matchers = [StopMatcher(self._stop) for _ in turns]
        pending = list(range(len(turns)))
        try:
            if worker.idle:
                # The turns begin a new batch, which stays as formed until it ends: let the
                # requests that reached the sockets meanwhile be counted first, for the
                # engine to wait for them. Microseconds when nothing else is there.
                await after_pending_reads()
            for turn in turns:
                worker.submit(turn)
            while pending:
                await self._wake.wait()
                self._wake.clear()
                for index in list(pending):
                    turn, matcher, splitter = turns[index], matchers[index], self._splitters[index]
                    if splitter is None:
                        reasoning, text = "", turn.take()
                    else:
                        reasoning, text = _split(splitter, turn.take_pieces())
                    if text and not matcher.stopped:
                        text = matcher.feed(text)
                        if matcher.stopped:
                            worker.cancel(turn)  # the rest is not wanted; free the slot now
                    else:
                        text = ""
                    if text or reasoning:
                        if self.first_text_at is None:
                            self.first_text_at = time.perf_counter()
                        yield ChoiceUpdate(index, text, reasoning=reasoning)
                    finish = turn.finish
                    if finish is None:
                        continue
                    pending.remove(index)
                    if finish.reason == "FAILED" and not matcher.stopped:
                        self.finish_reasons[index] = "error"
                        raise GenerationFailed(_engine_error(finish.error or "", worker, self.guidance_param))
                    reasoning, tail = splitter.finish() if splitter is not None else ("", "")
                    tail = matcher.feed(tail) if tail and not matcher.stopped else ""
                    tail += matcher.flush()
                    if tail or reasoning:
                        if self.first_text_at is None:
                            self.first_text_at = time.perf_counter()
                        yield ChoiceUpdate(index, tail, reasoning=reasoning)
                    reason = "stop" if matcher.stopped else _FINISH_REASONS.get(finish.reason, "stop")
                    self.finish_reasons[index] = reason
                    yield ChoiceUpdate(index, "", reason)
        finally:
            for index in pending:
                worker.cancel(turns[index])

    def usage(self) -> dict:
        """OpenAI's usage object from the engine's own counts: prompts counted once each
        (the ``n`` turns of a prompt share it), completions summed over every turn; a turn
        cut short (the client left) counts the tokens generated so far, and nothing if it
        had not begun."""
        totals = Usage()
        for position, turn in enumerate(self.turns):
            if turn.finish:
                usage = turn.finish.usage
            else:
                usage = Usage(len(turn.prompt_tokens), turn.tokens) if turn.began else Usage()
            if position % self.n == 0:
                totals.prompt_tokens += usage.prompt_tokens
                totals.cached_tokens += usage.cached_tokens
            totals.completion_tokens += usage.completion_tokens
        usage = {
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "total_tokens": totals.prompt_tokens + totals.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": totals.cached_tokens},
        }
        if self.reasoning_model:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    @property
    def reasoning_tokens(self) -> int:
        """Tokens generated up to and including each turn's end of reasoning, summed."""
        return sum(splitter.reasoning_tokens for splitter in self._splitters if splitter is not None)


def _split(splitter: ReasoningSplitter, pieces: list[tuple[str, int]]) -> tuple[str, str]:
    """The reasoning and content of a turn's new pieces, each token's text fed apart so
    that the splitter counts the reasoning's tokens."""
    reasoning, content = [], []
    for text, tokens in pieces:
        thought, said = splitter.feed(text, tokens)
        reasoning.append(thought)
        content.append(said)
    return "".join(reasoning), "".join(content)


# Seconds: the most a refusal's Retry-After asks a client to wait.
_MAX_RETRY_AFTER = 60


def _engine_error(message: str, worker: EngineWorker, guidance_param: str = "response_format") -> APIError:
    if message == SHUTTING_DOWN:
        return shutting_down("The server is shutting down: the generation was stopped before it finished.")
    if "max_session_tokens" in message and not message.startswith(REFUSED):  # the prompt leaves no room
        return context_length_exceeded(worker, None, "messages")
    if message.startswith(RETRYABLE_FAILURE):
        return EngineOverloaded(f"The engine is currently overloaded: the model '{worker.model_id}' had no room for "
                                "this generation. Please try again later.", headers={"Retry-After": "1"})
    if message == GRAMMAR_FAILURE:
        return InvalidValue(f"The engine failed while following the grammar of this '{guidance_param}' and stopped; "
                            "simplify it (fewer levels, no required recursion).", param=guidance_param)
    if message.startswith("Error creating grammar"):
        detail = message.splitlines()[0].removeprefix("Error creating grammar:").strip()
        return InvalidValue(f"The engine cannot follow this '{guidance_param}' schema: {detail}", param=guidance_param)
    return EngineError(f"The model failed while generating: {message}")


def generation_error(exc: GenerationFailed | EngineUnavailable) -> APIError:
    """What a client is told of a generation the engine ended with an error
    (:class:`GenerationFailed`) or could not take at all (the engine is stopping or
    stopped: 503 engine_unavailable)."""
    if isinstance(exc, GenerationFailed):
        return exc.api_error
    return EngineUnavailableError(str(exc))


def sampling_settings(data: dict, worker: EngineWorker) -> tuple[float, float | None, int | None]:
    """A request's temperature, top_p and top_k (None: not set, off). What the request
    leaves out comes from the model's own ``search`` block where the model opts in
    (ModelOptions.generation_defaults), else temperature is DEFAULT_TEMPERATURE and the
    others are off. A search block with ``do_sample`` false means greedy."""
    temperature, top_p, top_k = data.get("temperature"), data.get("top_p"), data.get("top_k")
    if worker.model_options.generation_defaults:
        search = worker.search_defaults
        if temperature is None:
            temperature = float(search.get("temperature", 1.0)) if search.get("do_sample") else 0.0
        if top_p is None and "top_p" in search:
            top_p = float(search["top_p"])
        if top_k is None and "top_k" in search:
            top_k = int(search["top_k"])
    if temperature is None:
        temperature = settings.DEFAULT_TEMPERATURE
    return temperature, top_p, top_k or None


def context_length_exceeded(worker: EngineWorker, prompt_tokens: int | None, param: str) -> ContextLengthExceeded:
    got = f" However, your prompt resulted in {prompt_tokens} tokens." if prompt_tokens is not None else ""
    return ContextLengthExceeded(
        f"This model's maximum context length is {worker.context_length} tokens.{got} "
        "Please reduce the length of the prompt, leaving room for at least one generated token.",
        param=param,
    )
