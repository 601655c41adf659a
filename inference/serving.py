"""How an OpenAI request becomes engine turns and comes back as OpenAI objects.

This layer knows the engine and OpenAI's response shapes, and nothing of HTTP: it returns
response dicts, or yields chunk dicts for a stream. Errors found before generation starts
are raised as :class:`~llmserver.errors.APIError`; an error after a stream has started is
yielded as its body (``{"error": ...}``, from llmserver.errors) because the 200 has already been sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from inference.engine import (GRAMMAR_FAILURE, REFUSED, RETRYABLE_FAILURE, SHUTTING_DOWN, EngineUnavailable,
                              EngineWorker, SamplingParams, Turn, Usage, after_pending_reads)
from inference.reasoning import ReasoningSplitter, splitter_for
from inference.stop import StopMatcher
from inference.tool_parsers import ToolParser, parse_tool_calls
from inference.tools import ToolCall
from llmserver.errors import (APIError, ContextLengthExceeded, EngineError, EngineOverloaded, EngineUnavailableError,
                              InvalidValue, UnsupportedParameter, shutting_down)

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
        return _context_length_exceeded(worker, None, "messages")
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


def _context_length_exceeded(worker: EngineWorker, prompt_tokens: int | None, param: str) -> ContextLengthExceeded:
    got = f" However, your prompt resulted in {prompt_tokens} tokens." if prompt_tokens is not None else ""
    return ContextLengthExceeded(
        f"This model's maximum context length is {worker.context_length} tokens.{got} "
        "Please reduce the length of the prompt, leaving room for at least one generated token.",
        param=param,
    )


class _Serving:
    """What chat and text completions share: sampling, prompt checks, SSE framing."""

    object_name = ""
    chunk_object_name = ""
    id_prefix = ""
    prompt_param = ""

    def __init__(self, worker: EngineWorker, model_name: str):
        self.worker = worker
        self.model_name = model_name

    def sampling(self, data: dict, max_tokens: int | None) -> SamplingParams:
        temperature, top_p, top_k = sampling_settings(data, self.worker)
        if top_k is not None:
            # Past the vocabulary the engine fails the turn; the k most likely of fewer
            # than k tokens are all of them, which is what the request asks.
            top_k = min(top_k, self.worker.vocab_size)
        if top_p == 0 or top_k == 1:
            # Only the most likely token: greedy. (og reads top_p 0 as "off", and refuses
            # to sample with top_k 1.)
            temperature = 0.0
        seed = data.get("seed")
        if seed is not None and temperature > 0 and not self.worker.dynamic_batching:
            # Only an engine with dynamic batching seeds one turn (og's set_seed).
            raise UnsupportedParameter("'seed' is supported only with temperature 0 (greedy decoding, deterministic "
                                       "without a seed): this engine's CPU scheduler cannot seed sampling per request.",
                                       param="seed")
        return SamplingParams(
            # The context bounds any turn; the engine ends it there with "length".
            max_tokens=min(max_tokens or self.default_max_tokens, self.worker.context_length),
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed if temperature > 0 else None,  # greedy needs none
            guidance=response_format_guidance(data.get("response_format")),
        )

    @property
    def default_max_tokens(self) -> int:
        """The tokens a turn may generate when the request does not say."""
        return settings.DEFAULT_MAX_TOKENS

    def check_prompt(self, tokens: np.ndarray) -> np.ndarray:
        if len(tokens) == 0:
            raise InvalidValue("The prompt is empty after tokenization.", param=self.prompt_param)
        if len(tokens) >= self.worker.context_length:
            raise _context_length_exceeded(self.worker, len(tokens), self.prompt_param)
        return tokens

    def new_id(self) -> str:
        return f"{self.id_prefix}{uuid.uuid4().hex}"

    async def create(self, generation: Generation) -> dict:
        """Run to the end and return the whole response object."""
        texts = [[] for _ in generation.turns]
        reasonings = [[] for _ in generation.turns]
        reasons = [None] * len(generation.turns)
        try:
            async for update in generation.updates():
                if update.reasoning:
                    reasonings[update.index].append(update.reasoning)
                if update.text:
                    texts[update.index].append(update.text)
                if update.finish_reason:
                    reasons[update.index] = update.finish_reason
        except GenerationFailed as failed:
            raise failed.api_error from None
        choices = [self.choice("".join(parts), index, reason) for index, (parts, reason) in enumerate(zip(texts, reasons))]
        for index, choice in enumerate(choices):
            generation.finish_reasons[index] = choice["finish_reason"]  # e.g. "tool_calls", for the record
            if generation.reasoning_model:
                self.add_reasoning(choice, "".join(reasonings[index]))
        return {
            "id": self.new_id(),
            "object": self.object_name,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": generation.usage(),
            "system_fingerprint": None,
        }

    async def stream(self, generation: Generation, *, include_usage: bool) -> AsyncIterator[dict]:
        """Yield the chunk objects of a streamed response (the view frames them as SSE)."""
        base = {"id": self.new_id(), "object": self.chunk_object_name, "created": int(time.time()), "model": self.model_name}
        if include_usage:
            base["usage"] = None  # OpenAI sends usage: null on every chunk but the last
        for index in range(len(generation.turns)):
            opening = self.opening_chunk(index)
            if opening is not None:
                yield {**base, "choices": [opening]}
        try:
            async for update in generation.updates():
                if update.reasoning:
                    yield {**base, "choices": [self.reasoning_chunk_choice(update)]}
                if not (update.text or update.finish_reason):
                    continue
                for choice in self.chunk_choices(update):
                    if choice["finish_reason"]:
                        generation.finish_reasons[update.index] = choice["finish_reason"]
                    yield {**base, "choices": [choice]}
        except (GenerationFailed, EngineUnavailable) as exc:
            yield generation_error(exc).body()
            return
        if include_usage:
            yield {**base, "choices": [], "usage": generation.usage()}

    # Per-endpoint shapes:
    def choice(self, text: str, index: int, finish_reason: str | None) -> dict:
        raise NotImplementedError

    def opening_chunk(self, index: int) -> dict | None:
        return None

    def add_reasoning(self, choice: dict, reasoning: str) -> None:
        """Put a reasoning model's reasoning into its whole choice."""

    def reasoning_chunk_choice(self, update: ChoiceUpdate) -> dict:
        raise NotImplementedError

    def chunk_choice(self, update: ChoiceUpdate) -> dict:
        raise NotImplementedError

    def chunk_choices(self, update: ChoiceUpdate) -> list[dict]:
        return [self.chunk_choice(update)]


class ChatServing(_Serving):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"
    prompt_param = "messages"

    def __init__(self, worker: EngineWorker, model_name: str):
        super().__init__(worker, model_name)
        self.tools: list[dict] = []  # offered to the model (none with tool_choice "none")
        self.parallel_tool_calls = True
        self._parsers: dict[int, ToolParser] = {}

    def generation(self, data: dict) -> Generation:
        choice = data.get("tool_choice", "none")
        self.tools = data.get("tools", []) if choice != "none" else []
        self.parallel_tool_calls = data.get("parallel_tool_calls", True)
        prompt = chat_prompt(self.worker, data["messages"], tools=self.tools,
                             template_kwargs=data.get("chat_template_kwargs"))
        tokens = self.check_prompt(np.asarray(self.worker.prompt_format.encode(prompt), dtype=np.int32))
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        params = self.sampling(data, max_tokens)
        calls = bool(self.tools) and choice != "auto"  # "required" or a named function: a call it will be
        if calls:
            if self.worker.tool_parsing is None:
                raise InvalidValue(f"Model '{self.model_name}' reads no tool calls (its tool_parser is 'none', or its "
                                   "chat template writes calls in no known format), so tool_choice cannot require one.",
                                   param="tool_choice")
            grammar = self.worker.tool_parsing.grammar(self.tools, choice, self.parallel_tool_calls)
            params = dataclasses.replace(params, guidance=("lark_grammar", grammar))
        # A grammar (response_format, or a required tool call) holds the whole output from
        # its first token: what it makes the model write is the answer, never reasoning.
        reasoning_parser = self.worker.reasoning_parser if params.guidance is None else None
        reasoning = (lambda: splitter_for(reasoning_parser, prompt)) if self.worker.reasoning_parser else None
        generation = Generation(self.worker, [tokens], params, n=data["n"], stop=data.get("stop"), reasoning=reasoning)
        if calls:
            generation.guidance_param = "tools"  # the grammar comes from the tools' schemas
        return generation

    @property
    def default_max_tokens(self) -> int:
        """A reasoning model thinks before it answers: a default that leaves room for both."""
        if self.worker.reasoning_parser:
            return settings.DEFAULT_REASONING_MAX_TOKENS
        return settings.DEFAULT_MAX_TOKENS

    def tool_parser(self) -> ToolParser | None:
        """A parser for one choice's text in the model's tool-call format; None when no
        tools are offered or the model's calls are not read."""
        if not self.tools or self.worker.tool_parsing is None:
            return None
        names = {tool["function"]["name"] for tool in self.tools}
        return self.worker.tool_parsing.parser(names, parallel=self.parallel_tool_calls)

    def choice(self, text, index, finish_reason):
        message = {"role": "assistant", "content": text, "refusal": None}
        parser = self.tool_parser()
        if parser is not None:
            content, calls = parse_tool_calls(text, parser)
            if calls:
                message = {"role": "assistant", "content": content, "refusal": None,
                           "tool_calls": [call.as_message_part() for call in calls]}
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def opening_chunk(self, index):
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def add_reasoning(self, choice, reasoning):
        # vLLM's field: OpenAI's chat completions return no reasoning text.
        choice["message"]["reasoning_content"] = reasoning or None

    def reasoning_chunk_choice(self, update):
        return {"index": update.index, "delta": {"reasoning_content": update.reasoning}, "logprobs": None,
                "finish_reason": None}

    def chunk_choice(self, update):
        delta = {"content": update.text} if update.text else {}
        return {"index": update.index, "delta": delta, "logprobs": None, "finish_reason": update.finish_reason}

    def chunk_choices(self, update):
        """With tools, a call streams as OpenAI's: its id and name first, then its
        arguments; text that may begin a call is held back until it is known."""
        parser = self._parsers.get(update.index)
        if parser is None:
            parser = self.tool_parser()
            if parser is None:
                return [self.chunk_choice(update)]
            self._parsers[update.index] = parser
        index, chunks = update.index, []
        content, calls = parser.feed(update.text) if update.text else ("", [])
        if update.finish_reason:
            content += parser.finish()
        if content:
            chunks.append(self._delta(index, {"content": content}))
        for call in calls:
            position = parser.calls.index(call)
            chunks.append(self._delta(index, {"tool_calls": [{
                "index": position, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}))
            chunks.append(self._delta(index, {"tool_calls": [{"index": position, "function": {"arguments": call.arguments}}]}))
        if update.finish_reason:
            reason = "tool_calls" if parser.calls and update.finish_reason == "stop" else update.finish_reason
            chunks.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
        return chunks

    @staticmethod
    def _delta(index: int, delta: dict) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


class CompletionServing(_Serving):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"
    prompt_param = "prompt"

    def generation(self, data: dict) -> Generation:
        prompts = []
        for prompt in data["prompt"]:
            if isinstance(prompt, str):
                # As the model's tokenizer makes a text's ids: its BOS first, if it adds one.
                tokens = np.asarray(self.worker.prompt_format.encode(prompt, bos=True), dtype=np.int32)
            else:
                tokens = np.asarray(prompt, dtype=np.int32)
                if int(tokens.max()) >= self.worker.vocab_size:
                    raise InvalidValue(f"Token id {int(tokens.max())} is out of the model's vocabulary.", param="prompt")
            prompts.append(self.check_prompt(tokens))
        return Generation(self.worker, prompts, self.sampling(data, data.get("max_tokens")), n=data["n"], stop=data.get("stop"))

    def choice(self, text, index, finish_reason):
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def chunk_choice(self, update):
        return {"text": update.text, "index": update.index, "logprobs": None, "finish_reason": update.finish_reason}


# JSON without free whitespace between tokens: a small model given the choice wanders in
# newlines and runs out of tokens before the value closes.
_COMPACT_JSON = {"whitespace_flexible": False}


def response_format_guidance(response_format: dict | None) -> tuple[str, str] | None:
    """The engine's guidance for OpenAI's ``response_format``: JSON (any object, or
    valid against the given schema) by construction; None for plain text."""
    if not response_format or response_format["type"] == "text":
        return None
    if response_format["type"] == "json_object":
        schema = {"type": "object"}
    else:
        schema = response_format["json_schema"].get("schema") or {}
    return "json_schema", json.dumps({"x-guidance": _COMPACT_JSON, **schema})


def chat_prompt(worker: EngineWorker, messages: list[dict], *, add_generation_prompt: bool = True,
                tools: list[dict] | None = None, template_kwargs: dict | None = None) -> str:
    """The prompt text of validated chat messages (and the tools offered), rendered by
    the model's own chat template as Hugging Face renders it (inference.chat_template):
    what /v1/chat/completions generates from and /tokenize counts. A 400 if the
    template cannot render them."""
    return worker.prompt_format.chat_prompt(messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                            template_kwargs=template_kwargs)


class TokenizeServing:
    """``/tokenize`` and ``/detokenize`` (vLLM's shapes), with the model's tokenizer."""

    def __init__(self, worker: EngineWorker):
        self.worker = worker

    def tokenize(self, data: dict) -> dict:
        if "messages" in data:
            text = chat_prompt(self.worker, data["messages"], add_generation_prompt=data["add_generation_prompt"],
                               tools=data.get("tools"), template_kwargs=data.get("chat_template_kwargs"))
        else:
            text = data["prompt"]
        # vLLM's add_special_tokens: the BOS the tokenizer adds to a text (by default for
        # a prompt; a chat template writes its own).
        tokens = self.worker.prompt_format.encode(text, bos=data.get("add_special_tokens", "messages" not in data))
        return {"count": len(tokens), "max_model_len": self.worker.context_length, "tokens": tokens}

    def detokenize(self, data: dict) -> dict:
        tokens = data["tokens"]
        if tokens and max(tokens) >= self.worker.vocab_size:
            raise InvalidValue(f"Token id {max(tokens)} is out of the model's vocabulary.", param="tokens")
        text = self.worker.tokenizer.decode(np.asarray(tokens, dtype=np.int32))
        # As Hugging Face decodes the same ids: SentencePiece tokenizers that prepend "▁"
        # when encoding (Llama 2, Mistral, Phi-3) drop the leading space og's decode keeps.
        if text.startswith(" ") and self.worker.token_decoder.strips_leading_space:
            text = text[1:]
        return {"prompt": text}


class ResponsesServing(ChatServing):
    """``/v1/responses``: the same turns as a chat completion, shaped as a Response
    (output items: a message with output_text, and function calls) and, streamed, as
    its typed events (response.created, response.output_text.delta, ...,
    response.completed)."""

    def __init__(self, worker: EngineWorker, model_name: str):
        super().__init__(worker, model_name)
        self.request: dict = {}

    def generation(self, data: dict) -> Generation:
        self.request = data["responses"]
        generation = super().generation(data)
        if generation.guidance_param == "response_format":
            generation.guidance_param = "text.format"  # as this request names it
        return generation

    def new_id(self) -> str:
        return f"resp_{uuid.uuid4().hex}"

    def response(self, response_id: str, created: int, status: str, output: list, generation: Generation | None,
                 finish_reason: str | None = None) -> dict:
        request = self.request
        usage = None
        if generation is not None and status != "in_progress":
            counts = generation.usage()
            usage = {
                "input_tokens": counts["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": counts["prompt_tokens_details"]["cached_tokens"]},
                "output_tokens": counts["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": generation.reasoning_tokens},
                "total_tokens": counts["total_tokens"],
            }
        choice = request.get("tool_choice", "auto" if self.tools else "none")
        temperature, top_p, _ = sampling_settings(request, self.worker)  # the model's defaults filled in
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if finish_reason == "length" else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self.model_name,
            "output": output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,  # stateless: nothing is kept, whatever the request said
            "temperature": temperature,
            "text": {"format": request.get("text", {}).get("format") or {"type": "text"}},
            "tool_choice": {"type": "function", **choice} if isinstance(choice, dict) else choice,
            "tools": request.get("tools", []),
            "top_p": 1.0 if top_p is None else top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": request.get("user"),
            "metadata": request.get("metadata", {}),
        }

    async def create(self, generation: Generation) -> dict:
        parts, thoughts, reason = [], [], None
        try:
            async for update in generation.updates():
                if update.reasoning:
                    thoughts.append(update.reasoning)
                if update.text:
                    parts.append(update.text)
                if update.finish_reason:
                    reason = update.finish_reason
        except GenerationFailed as failed:
            raise failed.api_error from None
        text = "".join(parts)
        parser = self.tool_parser()
        content, calls = parse_tool_calls(text, parser) if parser is not None else (text, [])
        output = [_reasoning_item(f"rs_{uuid.uuid4().hex}", "".join(thoughts), "completed")] if thoughts else []
        if content or not calls:
            output.append(_message_item(f"msg_{uuid.uuid4().hex}", content or "", "completed"))
        output += [_function_call_item(call, "completed") for call in calls]
        generation.finish_reasons[0] = "tool_calls" if calls and reason == "stop" else reason
        status = "incomplete" if reason == "length" else "completed"
        return self.response(self.new_id(), int(time.time()), status, output, generation, reason)

    async def stream(self, generation: Generation, *, include_usage: bool = False) -> AsyncIterator[dict]:
        response_id, created = self.new_id(), int(time.time())
        events = _EventCounter()
        yield events.next("response.created", response=self.response(response_id, created, "in_progress", [], None))
        yield events.next("response.in_progress", response=self.response(response_id, created, "in_progress", [], None))
        output: list[dict] = []
        message = None  # the output message item while its text streams
        parser = self.tool_parser()
        text, reason = [], None
        reasoning_item, thoughts = None, []  # the reasoning output item while its text streams

        def opened(item: dict, part: dict) -> list[dict]:
            """An output item (reasoning or message) and its one content part begin."""
            output.append(item)
            index = len(output) - 1
            return [events.next("response.output_item.added", output_index=index, item={**item, "content": []}),
                    events.next("response.content_part.added", item_id=item["id"], output_index=index,
                                content_index=0, part=part)]

        def closed(item: dict, done_text: str, done_event: str) -> list[dict]:
            """The item's text is complete: its done events, last the item's."""
            index = output.index(item)
            item["content"][0]["text"] = done_text
            item["status"] = "completed"
            return [
                events.next(done_event, item_id=item["id"], output_index=index, content_index=0, text=done_text),
                events.next("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=item["content"][0]),
                events.next("response.output_item.done", output_index=index, item=item),
            ]

        def open_reasoning():
            nonlocal reasoning_item
            reasoning_item = _reasoning_item(f"rs_{uuid.uuid4().hex}", "", "in_progress")
            return opened(reasoning_item, {"type": "reasoning_text", "text": ""})

        def close_reasoning():
            nonlocal reasoning_item
            closing, reasoning_item = closed(reasoning_item, "".join(thoughts), "response.reasoning_text.done"), None
            return closing

        def open_message():
            nonlocal message
            message = _message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress")
            return opened(message, {"type": "output_text", "text": "", "annotations": []})

        def close_message():
            nonlocal message
            closing, message = closed(message, "".join(text), "response.output_text.done"), None
            return closing

        try:
            async for update in generation.updates():
                if update.reasoning:
                    if reasoning_item is None:
                        for event in open_reasoning():
                            yield event
                    thoughts.append(update.reasoning)
                    yield events.next("response.reasoning_text.delta", item_id=reasoning_item["id"],
                                      output_index=output.index(reasoning_item), content_index=0, delta=update.reasoning)
                if reasoning_item is not None and (update.text or update.finish_reason):
                    for event in close_reasoning():
                        yield event
                content, calls = (parser.feed(update.text) if parser else (update.text, [])) if update.text else ("", [])
                if update.finish_reason:
                    reason = update.finish_reason
                    if parser:
                        content += parser.finish()
                if content:
                    if message is None:
                        for event in open_message():
                            yield event
                    text.append(content)
                    yield events.next("response.output_text.delta", item_id=message["id"], output_index=output.index(message),
                                      content_index=0, delta=content)
                for call in calls:
                    if message is not None:
                        for event in close_message():
                            yield event
                    item = _function_call_item(call, "in_progress")
                    output.append(item)
                    index = len(output) - 1
                    yield events.next("response.output_item.added", output_index=index, item={**item, "arguments": ""})
                    yield events.next("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                      delta=call.arguments)
                    yield events.next("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                      arguments=call.arguments)
                    item["status"] = "completed"
                    yield events.next("response.output_item.done", output_index=index, item=item)
        except (GenerationFailed, EngineUnavailable) as exc:
            error = generation_error(exc)
            yield events.next("error", **error.responses_event())
            failed = self.response(response_id, created, "failed", output, generation, reason)
            failed["error"] = error.responses_error()
            yield events.next("response.failed", response=failed)
            return
        if message is None and all(item["type"] == "reasoning" for item in output):
            # An empty answer is still a message.
            for event in open_message():
                yield event
        if message is not None:
            for event in close_message():
                yield event
        has_calls = any(item["type"] == "function_call" for item in output)
        generation.finish_reasons[0] = "tool_calls" if has_calls and reason == "stop" else reason
        status = "incomplete" if reason == "length" else "completed"
        yield events.next("response.incomplete" if status == "incomplete" else "response.completed",
                          response=self.response(response_id, created, status, output, generation, reason))


class _EventCounter:
    """Responses stream events, numbered in order (``sequence_number``)."""

    def __init__(self):
        self.sequence = 0

    def next(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": status}


def _function_call_item(call: ToolCall, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}
