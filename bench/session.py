"""What a request's session length costs a static batch: ``python -m bench.session``

The server gives each request on a static scheduler ``max_session_tokens`` of its prompt
+ ``max_tokens`` + 1 (``ContinuousBatching._session_tokens``), not the model's context.
This measures og.Engine alone, both ways, on each model given: the decode step's
milliseconds and a request's whole time (creation, prefill, decode, close), with 1 and 4
sequences in the batch, rounds interleaved, medians reported. Writes
bench/results/session-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Tell me a long story about the sea."


def measure(engine, og, prompt: np.ndarray, sequences: int, max_tokens: int, session: int) -> tuple[float, float]:
    """(ms per decode step, ms per request) for ``sequences`` requests begun together."""
    requests = []
    t0 = time.perf_counter()
    for _ in range(sequences):
        options = og.RequestOptions()
        options.set_max_session_tokens(session)
        request = engine.create_request(options=options)
        turn = og.TurnOptions(request)
        turn.set_max_generated_tokens(max_tokens)
        turn.set_min_generated_tokens(max_tokens)
        turn.set_do_sample(False)
        request.begin_turn(prompt, turn)
        requests.append(request)
    buffer = engine.create_event_buffer(256)
    steps, first = 0, None
    while engine.has_pending_requests():
        engine.run(buffer)
        steps += 1
        if steps == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    for request in requests:
        request.close()
    return (end - first) / (steps - 1) * 1e3, (end - t0) * 1e3


def run_model(path: str, rounds: int, max_tokens: int) -> list[dict]:
    import onnxruntime_genai as og

    context = json.loads(Path(path, "genai_config.json").read_text())["model"]["context_length"]
    config = og.Config(path)
    config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": 16}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    text = tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": PROMPT}]), add_generation_prompt=True)
    prompt = np.asarray(tokenizer.encode(text), dtype=np.int32)
    engine = og.Engine(model)
    short = len(prompt) + max_tokens + 1
    cells = [(n, s) for n in (1, 4) for s in (context, short)]
    samples = {cell: [] for cell in cells}
    measure(engine, og, prompt, 1, 4, context)  # warm-up
    for _ in range(rounds):
        for cell in cells:
            samples[cell].append(measure(engine, og, prompt, cell[0], max_tokens, cell[1]))
    rows = []
    for (n, session), values in samples.items():
        rows.append({"model": path, "sequences": n, "session": session, "context": context,
                     "step_ms": statistics.median(v[0] for v in values),
                     "request_ms": statistics.median(v[1] for v in values)})
    return rows


def markdown(report: dict) -> str:
    lines = [f"# Session length and a static batch, {report['date']}", "",
             f"og.Engine alone (`python -m bench.session`), batch size 16, greedy, {report['max_tokens']} tokens a "
             f"request, \"{PROMPT}\", {report['rounds']} interleaved rounds, medians. *context*: "
             "max_session_tokens = the model's context, as the server set it before; *short*: prompt + "
             "max_tokens + 1, as it sets it now.", "",
             "| model | sequences | session | decode step ms | request ms | step vs context | request vs context |",
             "|---|---:|---|---:|---:|---:|---:|"]
    rows = report["rows"]
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["sequences"] == row["sequences"]
                    and r["session"] == r["context"])
        kind = "context" if row["session"] == row["context"] else "short"
        lines.append(f"| {row['model']} | {row['sequences']} | {kind} ({row['session']}) | {row['step_ms']:.3f} | "
                     f"{row['request_ms']:.1f} | {row['step_ms'] / base['step_ms']:.3f} | "
                     f"{row['request_ms'] / base['request_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model folders (default: models/bench and models/demo)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    models = args.model or [m for m in ("models/bench", "models/demo") if Path(m, "genai_config.json").exists()]
    rows = [row for path in models for row in run_model(path, args.rounds, args.max_tokens)]
    report = {"date": datetime.date.today().isoformat(), "rounds": args.rounds, "max_tokens": args.max_tokens,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"session-{report['date']}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"session-{report['date']}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
