"""The peer of ``make bench``: the OpenAI-style server a user would write in an afternoon.

FastAPI + uvicorn (with uvloop and httptools, as ``uvicorn[standard]`` installs them),
one ``og.Generator`` per request, each on a thread of its own, no batching, no keys, no
limits, no accounting. It answers ``POST /v1/chat/completions`` streamed (Server-Sent
Events in OpenAI's chunk shape, ``stream_options.include_usage``) and non-streamed, and
``GET /health``. The prompt goes through the model's own chat template and every token
through a ``TokenizerStream``, as in llmserver and ``bench/raw.py``; greedy when
``temperature`` is 0. EOS ends the turn and is not counted, as llmserver does not count it.

It runs in its own venv (``.venv-peer``, ``requirements-peer.txt``): it imports nothing
of llmserver's, so it stands for code written without it::

    .venv-peer/bin/python bench/peer_fastapi.py --model-path models/demo --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid

import numpy as np
import onnxruntime_genai as og
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI()
state: dict = {}


class Message(BaseModel):
    role: str
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _generate(request: ChatRequest, emit, stop: threading.Event) -> tuple[int, int, str]:
    """Runs on a thread: one Generator for this request, ``emit(text)`` per token.
    Returns (prompt tokens, completion tokens, finish reason)."""
    model, tokenizer = state["model"], state["tokenizer"]
    messages = json.dumps([m.model_dump() for m in request.messages])
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    max_tokens = request.max_tokens or state["context_length"] - len(prompt)
    params = og.GeneratorParams(model)
    options = {"max_length": min(state["context_length"], len(prompt) + max_tokens)}
    if request.temperature <= 0:
        options["do_sample"] = False
    else:
        options.update(do_sample=True, temperature=request.temperature)
        if request.top_p is not None:
            options["top_p"] = request.top_p
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    stream = tokenizer.create_stream()
    generated, reason = 0, "length"
    while generated < max_tokens and not stop.is_set():
        if generator.is_done():
            break
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in state["eos"]:
            reason = "stop"
            break
        generated += 1
        emit(stream.decode(token))
    return len(prompt), generated, reason


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat_completions(request: ChatRequest):
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": request.model}
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    if not request.stream:
        pieces: list[str] = []
        prompt_tokens, tokens, reason = await loop.run_in_executor(None, _generate, request, pieces.append, stop)
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": request.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "finish_reason": reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}}

    queue: asyncio.Queue = asyncio.Queue()

    def run() -> None:
        try:
            result = _generate(request, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text), stop)
        except Exception as exc:  # noqa: BLE001 - the stream ends with the error
            result = exc
        loop.call_soon_threadsafe(queue.put_nowait, result)

    async def events():
        threading.Thread(target=run, daemon=True).start()
        try:
            yield _event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})
            while isinstance(item := await queue.get(), str):
                yield _event({**head, "choices": [{"index": 0, "delta": {"content": item}, "finish_reason": None}]})
            if isinstance(item, Exception):
                yield _event({"error": {"message": str(item), "type": "server_error"}})
                return
            prompt_tokens, tokens, reason = item
            yield _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            if request.stream_options and request.stream_options.include_usage:
                yield _event({**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                               "completion_tokens": tokens,
                                                               "total_tokens": prompt_tokens + tokens}})
            yield b"data: [DONE]\n\n"
        finally:
            stop.set()  # the client went away: the thread stops at its next token

    return StreamingResponse(events(), media_type="text/event-stream")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    model = og.Model(args.model_path)
    tokenizer = og.Tokenizer(model)
    with open(f"{args.model_path}/genai_config.json") as f:
        config = json.load(f)
    eos = config["model"]["eos_token_id"]
    state.update(model=model, tokenizer=tokenizer, context_length=config["model"]["context_length"],
                 eos=set(eos if isinstance(eos, list) else [eos]))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
