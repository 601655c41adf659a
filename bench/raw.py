"""The reference point of ``make bench``: ``og.Engine`` driven directly from Python.

Runs as a child process of ``bench.run`` (so its CPU time and peak memory are measured
the way the servers' are) and answers one JSON line per command read from stdin::

    {"cell": {"concurrency": 8, "requests": 2, "max_tokens": 32, "messages": [...]}}
    → {"requests": [{"ttft": s, "itl": s, "completion_tokens": n, "prompt_tokens": n, ...}], "wall_s": s}

A cell is a closed loop, as the HTTP clients run it: ``concurrency`` clients, each
beginning its next turn as soon as its previous one finished, ``requests`` turns each.
The prompt goes through the model's own chat template and tokenizer and every token
through a TokenizerStream, as the server does; the engine is the same build with the
same batch size overlay. Nothing else runs between steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    import onnxruntime_genai as og

    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    args = parser.parse_args()
    config = og.Config(args.model_path)
    config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": args.max_batch_size}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    genai_config = json.load(open(f"{args.model_path}/genai_config.json"))["model"]
    context_length = genai_config["context_length"]
    least_session = int((genai_config.get("decoder", {}).get("sliding_window") or {}).get("window_size") or 1)
    engine = og.Engine(model)
    buffer = engine.create_event_buffer(max(256, 4 * args.max_batch_size))
    print(json.dumps({"ready": True}), flush=True)

    for line in sys.stdin:
        cell = json.loads(line)["cell"]
        prompt_text = tokenizer.apply_chat_template(json.dumps(cell["messages"]), add_generation_prompt=True)
        prompt = np.asarray(tokenizer.encode(prompt_text), dtype=np.int32)
        max_tokens = cell["max_tokens"]
        results = []
        live = {}  # og.Request -> per-turn record
        left = {client: cell["requests"] for client in range(cell["concurrency"])}

        def begin(client: int) -> None:
            options = og.RequestOptions()
            # As the server sizes a request's session (ContinuousBatching._session_tokens).
            options.set_max_session_tokens(min(context_length, max(len(prompt) + max_tokens + 1, least_session)))
            request = engine.create_request(options=options)
            turn = og.TurnOptions(request)
            turn.set_max_generated_tokens(max_tokens)
            record = {"client": client, "t0": time.perf_counter(), "first": None, "stream": tokenizer.create_stream(),
                      "text": []}
            request.begin_turn(prompt, turn)
            live[request] = record
            left[client] -= 1

        started = time.perf_counter()
        for client in left:
            begin(client)
        while live:
            events = engine.run(buffer)
            now = time.perf_counter()
            for event in events:
                record = live.get(event.request)
                if record is None:
                    continue
                flags = int(event.flags)
                if flags & 1:  # TOKEN
                    if record["first"] is None:
                        record["first"] = now
                    record["text"].append(record["stream"].decode(int(event.token)))
                if flags & (2 | 8):  # TURN_FINISHED | FAILED
                    del live[event.request]
                    event.request.close()
                    usage = event.usage
                    tokens = int(usage.generated_tokens)
                    first = record["first"] if record["first"] is not None else now
                    results.append({
                        "ok": not flags & 8, "ttft": first - record["t0"], "latency": now - record["t0"],
                        "itl": (now - first) / (tokens - 1) if tokens > 1 else None,
                        "completion_tokens": tokens, "prompt_tokens": int(usage.prompt_tokens),
                        "finish_reason": event.finish_reason.name, "chars": len("".join(record["text"])),
                    })
                    if left[record["client"]]:
                        begin(record["client"])
        print(json.dumps({"requests": results, "wall_s": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
