"""What memory does a model take, loaded and per sequence? ``python -m bench.memory``

For each model folder and ``max_model_len``, one fresh process loads the model as the
server does (:class:`inference.engine.EngineWorker`: the effective context overlaid on
``search.max_length``, the batch measured at load) with a batch of N, then answers N
chat requests at once ("Count from 1 to 20.", greedy, 32 tokens at most). It reports
the resident memory (RSS) before the load, after it, and the peak while the N sequences
run, sampled every 2 ms; per sequence is what a sequence adds to the peak (the rows with
N against the row with 1, see ``add_per_sequence``).

Beside the measurement, the KV cache a token takes by the model's shape:
2 (key and value) x layers x KV heads x head size x 4 bytes (CPU exports keep the
cache in fp32), times the effective context: what the engine reserves per sequence.

``--long`` adds, for each model, a copy (its weights linked, not copied) whose
genai_config.json says ``context_length`` 131072, as Phi-3.5-mini's or Llama 3.1's do,
served at the same max_model_len; and the first copy served with its own context (one
sequence).

Writes ``bench/results/memory-<date>.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kv_bytes_per_token(genai_config: dict) -> int:
    decoder = genai_config["model"]["decoder"]
    head_size = decoder.get("head_size") or decoder["hidden_size"] // decoder["num_attention_heads"]
    return 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * head_size * 4


# --- one measurement, in its own process --------------------------------------------------


def measure(path: str, max_model_len: int, sequences: int) -> dict:
    import numpy as np

    from inference.engine import EngineWorker, SamplingParams, Turn
    from inference.model_options import ModelOptions

    before = resident_bytes()
    worker = EngineWorker("bench", path, max_batch_size=sequences, model_options=ModelOptions(max_model_len=max_model_len))
    started = time.perf_counter()
    worker.start()
    load_seconds = time.perf_counter() - started
    loaded = resident_bytes()
    messages = json.dumps([{"role": "user", "content": "Count from 1 to 20."}])
    try:
        prompt = worker.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except RuntimeError:  # no chat template: the text itself
        prompt = "Count from 1 to 20."
    tokens = np.asarray(worker.tokenizer.encode(prompt), dtype=np.int32)

    peak = loaded
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, resident_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def answer_all() -> list[str]:
        loop = asyncio.get_running_loop()
        turns = [Turn(tokens, SamplingParams(max_tokens=32), loop, asyncio.Event()) for _ in range(sequences)]
        worker.hold_places(turns)
        for turn in turns:
            worker.submit(turn)
        texts = []
        for turn in turns:
            text = ""
            while turn.finish is None or turn._pieces:
                await turn.wake.wait()
                turn.wake.clear()
                text += turn.take()
            texts.append(text)
        return texts

    started = time.perf_counter()
    texts = asyncio.run(answer_all())
    answer_seconds = time.perf_counter() - started
    sampling = False
    sampler.join()
    peak = max(peak, resident_bytes())
    genai_config = json.loads((Path(path) / "genai_config.json").read_text())
    worker.stop()
    return {
        "context_length": genai_config["model"]["context_length"],
        "max_model_len": max_model_len,
        "effective_context": worker.context_length,
        "sequences": sequences,
        "batch_limit": worker.batch_limit,
        "load_seconds": round(load_seconds, 2),
        "answer_seconds": round(answer_seconds, 2),
        "rss_before_mib": round(before / MIB, 1),
        "rss_loaded_mib": round(loaded / MIB, 1),
        "rss_peak_mib": round(peak / MIB, 1),
        "kv_bytes_per_token": kv_bytes_per_token(genai_config),
        "kv_per_sequence_mib": round(kv_bytes_per_token(genai_config) * worker.context_length / MIB, 1),
        "answers_ok": sum(1 for text in texts if text.strip()),
        "first_answer": texts[0][:60],
    }


# --- the plan -----------------------------------------------------------------------------


def long_context_copy(model: Path, folder: Path) -> Path:
    """``model`` with context_length (and search.max_length) 131072; files linked."""
    copy = folder / f"{model.name}-131072"
    copy.mkdir()
    for item in model.iterdir():
        if item.name != "genai_config.json":
            os.symlink(item.resolve(), copy / item.name)
    config = json.loads((model / "genai_config.json").read_text())
    config["model"]["context_length"] = config["search"]["max_length"] = 131072
    (copy / "genai_config.json").write_text(json.dumps(config, indent=4))
    return copy


def context_of(model: Path) -> int:
    return int(json.loads((model / "genai_config.json").read_text())["model"]["context_length"])


def run_child(path: Path, max_model_len: int, sequences: int, timeout: float) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", str(path), str(max_model_len), str(sequences)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_per_sequence(rows: list[dict]) -> None:
    """Per sequence: what a sequence run at once with others adds to the process's peak,
    (peak with N - peak with 1) / (sequences served at once - 1), from the rows of the
    same model and max_model_len, when all N run at once (N no more than served; more
    wait for a slot and reuse freed memory). (Loading already begins a batch to measure it, and
    the allocator keeps that memory for the sequences that follow, so the growth after
    load alone says little.)"""
    single = {(row["model"], row["max_model_len"]): row for row in rows if row.get("sequences") == 1 and "error" not in row}
    for row in rows:
        one = single.get((row["model"], row.get("max_model_len")))
        served = row.get("batch_limit", 0)
        if "error" not in row and one is not None and 1 < row["sequences"] <= served:
            row["per_sequence_mib"] = round((row["rss_peak_mib"] - one["rss_peak_mib"]) / (served - 1), 1)
        else:
            row["per_sequence_mib"] = None


def report(rows: list[dict], args) -> str:
    lines = [
        f"# Memory per model and per sequence, {datetime.date.today().isoformat()}",
        "",
        f"`python -m bench.memory {' '.join(sys.argv[1:])}` (`make bench-memory`) on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Each row is one fresh process: load the "
        "model as the server does (EngineWorker with a batch of N), then answer N chat requests at once "
        "(greedy, 32 tokens at most). RSS is sampled every 2 ms. *Served* is the sequences one engine step "
        "serves (measured at load; the rest wait). *Growth* = peak - RSS before the load (weights, runtime "
        "and sequences). *Per sequence* = (peak with N - peak with 1) / (N - 1), for N all served at once. "
        "*KV by shape* = 2 x layers x KV heads x head size x 4 bytes x effective context: the cache the "
        "engine reserves for a sequence when it begins. What a sequence adds beyond it is mostly the "
        "logits of its prompt at prefill (4 bytes x vocabulary x prompt tokens: large for a 128k "
        "vocabulary on a tiny model).",
        "",
        "Rerun: `make bench-memory` (the demo model and models/bench if built, each also as a copy "
        "with context_length 131072), or `make bench-memory MEMORY_ARGS=\"--model <folder> --max-model-len 8192 "
        "--sequences 1 4\"`; each row is one process, a few seconds each on these models.",
        "",
        "| model | context_length | max_model_len | effective | N | served | load s | answer s "
        "| RSS after load MiB | peak MiB | growth MiB | per sequence MiB | KV by shape MiB | answered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | {row['max_model_len']} | | {row['sequences']} | | "
                         f"failed: {row['error']} | | | | | | | |")
            continue
        per_sequence = "" if row["per_sequence_mib"] is None else row["per_sequence_mib"]
        lines.append(
            f"| {row['model']} | {row['context_length']} | {row['max_model_len']} | {row['effective_context']} "
            f"| {row['sequences']} | {row['batch_limit']} | {row['load_seconds']} | {row['answer_seconds']} "
            f"| {row['rss_loaded_mib']} | {row['rss_peak_mib']} | {round(row['rss_peak_mib'] - row['rss_before_mib'], 1)} "
            f"| {per_sequence} | {row['kv_per_sequence_mib']} | {row['answers_ok']}/{row['sequences']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MAX_MODEL_LEN", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--model", action="append", default=[],
                        help="a model folder (repeatable; default models/demo, and models/bench if built)")
    parser.add_argument("--max-model-len", type=int, action="append", default=[],
                        help="repeatable; default 4096")
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--long", action="store_true",
                        help="also a 131072-context copy of each model; the first also at max_model_len 131072, N=1")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one measurement may take")
    parser.add_argument("--out", default="", help="report name (default memory-<date>)")
    args = parser.parse_args()
    if args.child:
        path, length, sequences = args.child
        print(json.dumps(measure(path, int(length), int(sequences))))
        return

    models = [Path(m) for m in args.model] or [ROOT / "models" / "demo"]
    if not args.model and (ROOT / "models" / "bench" / "genai_config.json").is_file():
        models.append(ROOT / "models" / "bench")
    lengths = args.max_model_len or [4096]
    plan = [(model, length, n) for model in models for length in lengths for n in args.sequences]
    with tempfile.TemporaryDirectory(prefix="llmserver-memory-") as tmp:
        if args.long:
            copies = [long_context_copy(model, Path(tmp)) for model in models if context_of(model) < 131072]
            plan += [(copy, length, n) for copy in copies for length in lengths for n in args.sequences]
            if copies:  # served with its own context: one sequence of the smallest
                plan.append((copies[0], 131072, 1))
        rows = []
        for model, length, sequences in plan:
            row = {"model": model.name, **run_child(model, length, sequences, args.timeout)}
            row.setdefault("max_model_len", length)
            row.setdefault("sequences", sequences)
            rows.append(row)
            print(json.dumps(row), flush=True)
    add_per_sequence(rows)
    text = report(rows, args)
    name = args.out or f"memory-{datetime.date.today().isoformat()}"
    results = ROOT / "bench" / "results"
    (results / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / f"{name}.md").write_text(text)
    print(text)
    print(f"wrote bench/results/{name}.md")


if __name__ == "__main__":
    main()
