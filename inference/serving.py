"""How an OpenAI request becomes engine turns and comes back as OpenAI objects.

This layer knows the engine and OpenAI's response shapes, and nothing of HTTP: it returns
response dicts, or yields chunk dicts for a stream. Errors found before generation starts
are raised as :class:`~llmserver.errors.APIError`; an error after a stream has started is
yielded as its body (``{"error": ...}``, from llmserver.errors) because the 200 has already been sent.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
from django.conf import settings

from inference.engine import EngineUnavailable, EngineWorker, SamplingParams
from inference.generation import (ChoiceUpdate, Generation, GenerationFailed, context_length_exceeded, generation_error,
                                  sampling_settings)
from inference.reasoning import splitter_for
from inference.tool_parsers import ToolParser, parse_tool_calls
from inference.tools import ToolCall
from llmserver.errors import InvalidValue, UnsupportedParameter


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
            raise context_length_exceeded(self.worker, len(tokens), self.prompt_param)
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

    @property
    def reads_calls(self) -> bool:
        """Whether tools are offered and the model's calls are read."""
        return bool(self.tools) and self.worker.tool_parsing is not None

    def tool_parser(self) -> ToolParser | None:
        """A parser for one choice's text in the model's tool-call format; None when no
        tools are offered or the model's calls are not read."""
        if not self.reads_calls:
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

    def streamed(self, update: ChoiceUpdate) -> tuple[str, list[ToolCall], str | None]:
        """One streamed update as (content, the calls it completed, finish reason): with
        tools, text that may begin a call is held back until it is known, and a turn that
        made calls finishes with "tool_calls"."""
        parser = self._parsers.get(update.index)
        if parser is None:
            parser = self.tool_parser()
            if parser is None:
                return update.text, [], update.finish_reason
            self._parsers[update.index] = parser
        content, calls = parser.feed(update.text) if update.text else ("", [])
        if update.finish_reason:
            content += parser.finish()
        reason = "tool_calls" if parser.calls and update.finish_reason == "stop" else update.finish_reason
        return content, calls, reason

    def chunk_choices(self, update):
        """With tools, a call streams as OpenAI's: its id and name first, then its
        arguments."""
        if not self.reads_calls:
            return [self.chunk_choice(update)]
        index, chunks = update.index, []
        content, calls, reason = self.streamed(update)
        if content:
            chunks.append(self._delta(index, {"content": content}))
        for call in calls:
            position = self._parsers[index].calls.index(call)
            chunks.append(self._delta(index, {"tool_calls": [{
                "index": position, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}))
            chunks.append(self._delta(index, {"tool_calls": [{"index": position, "function": {"arguments": call.arguments}}]}))
        if reason:
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
