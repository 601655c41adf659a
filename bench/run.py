"""``make bench``: the server against its engine and against the naive baseline.

For each model (the benchmark model, ``make bench-model``, and the demo model), in one run
on one machine, it starts

- **raw**: ``og.Engine`` driven directly from Python (``bench/raw.py``, a child process);
- **server**: llmserver over HTTP with API keys, limits and usage accounting on
  (measured streamed, and non-streamed as **server-json**);
- **no-keys**: the same server with ``REQUIRE_API_KEY=false`` (streamed);
- **naive**: the original plan's design behind the same HTTP front: one ``og.Generator``
  per request, one request at a time (``bench/naive.py``), keys on (streamed);

all with the same engine batch size (``MAX_BATCH_SIZE``, 16). For 1, 4, 8 and 16 clients
each system serves a closed loop: every client sends its next request as soon as the
previous one ends (over one keep-alive connection; the lean HTTP client of
``bench/client.py``). The systems are measured interleaved, ``--rounds`` times, so that
drift on a shared machine hits them alike; figures are the median over the rounds and the
spread is their min–max. Requests are the same for every system: the model's chat template
around one user message, greedy, ``max_tokens`` (the benchmark model never emits EOS, so
every request runs to it; the demo model counts to 40 and stops).

Figures per cell: output tokens/s (engine-counted tokens over wall time), time to first
token p50/p95, inter-token latency p50/p95 (per request: from the first token to the end
of the turn, divided by the tokens after the first), requests/s for 1-token requests
(non-streamed), CPU seconds per 1000 output tokens (of the process serving, client
excluded) and each process's peak RSS.

Writes ``bench/results/<date>.json`` (every cell of every round, the machine, package
versions, git commit), ``<date>.md`` (the tables and the targets) and ``<date>.png``
(tokens/s and TTFT against concurrency, one line per system), then prints the targets with
their measured ratios and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.accounting import (PY, ROOT, Server, _client_cpu, _machine_busy_seconds, machine,
                              process_cpu_seconds, wait_for_quiet)
from bench.client import StreamClient

RESULTS = ROOT / "bench" / "results"
BATCH = 16

# model name -> how it is driven. tokens_per_cell sizes each cell (requests per client =
# tokens_per_cell / (clients x max_tokens), at least 1).
MODELS = {
    "bench": {"path": "models/bench", "id": "bench", "prompt": "Tell me a long story about the sea.",
              "max_tokens": 32, "tokens_per_cell": 384, "one_token_requests": 24, "min_scale": 0.34},
    "demo": {"path": "models/demo", "id": "llmserver-demo", "prompt": "Count from 1 to 40.",
             "max_tokens": 64, "tokens_per_cell": 8000, "one_token_requests": 120, "min_scale": 0.25},
}
# Of the time budget, the part each model's cells get (the benchmark model's are slower).
SHARE = {"bench": 0.6, "demo": 0.4}
SYSTEMS = {
    "raw": "og.Engine driven directly from Python",
    "server": "llmserver, streamed, keys + limits + accounting",
    "server-json": "llmserver, non-streamed, keys + limits + accounting",
    "no-keys": "llmserver, streamed, REQUIRE_API_KEY=false",
    "naive": "one og.Generator per request, one at a time, same HTTP front, streamed, keys on",
}
PLOTTED = ["raw", "server", "no-keys", "naive"]


class RawEngine:
    """bench/raw.py as a child process, one JSON line per cell."""

    name = "raw"

    def __init__(self, model_path: str, log_path: Path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([PY, "-m", "bench.raw", "--model-path", model_path, "--max-batch-size",
                                      str(BATCH)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise SystemExit(f"the raw engine did not start; see {log_path}")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def cell(self, **cell) -> dict:
        self.proc.stdin.write(json.dumps({"cell": cell}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.log.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _http_cell(server: Server, model: dict, clients: int, requests: int, max_tokens: int,
                     stream: bool) -> tuple[list[dict], float]:
    body = {"model": model["id"], "messages": [{"role": "user", "content": model["prompt"]}],
            "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}

    async def client(connection: StreamClient):
        call = connection.stream if stream else connection.complete
        return [await call("/v1/chat/completions", body) for _ in range(requests)]

    # The connections are open before the clock starts and the first requests go out
    # together, as the raw engine's are all there when its clock starts. Connecting as
    # they went, the clients' first requests reached the server up to ~4 ms apart (the
    # client starved by the engine's prefill of the first), and on the benchmark model
    # one began a batch alone in some cells and not in others.
    connections = [StreamClient("127.0.0.1", server.port, headers) for _ in range(clients)]
    try:
        await asyncio.gather(*(connection.connect() for connection in connections))
        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client(connection) for connection in connections))
        wall = time.perf_counter() - t0
    finally:
        for connection in connections:
            await connection.close()
    return [r for rs in per_client for r in rs], wall


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


# The single-stream cells decide the TTFT target (a p50 per cell): never fewer requests.
# At a third of full size the benchmark model's had 4 on a slow machine, and one round's
# p50 of 4 moved the target's figure by 15 ms.
MIN_SINGLE_STREAM_REQUESTS = 8


def requests_per_client(model: dict, clients: int, one_token: bool, scale: float) -> int:
    """A cell's size: ``tokens_per_cell`` (or ``one_token_requests``) times ``scale``,
    spread over the clients, at least one request each (a single stream's cell at least
    ``MIN_SINGLE_STREAM_REQUESTS``)."""
    if one_token:
        return max(1, math.ceil(model["one_token_requests"] * scale / clients))
    least = MIN_SINGLE_STREAM_REQUESTS if clients == 1 else 1
    return max(least, round(model["tokens_per_cell"] * scale / (clients * model["max_tokens"])))


def measure(system: str, target, model: dict, clients: int, *, one_token: bool = False, scale: float = 1.0) -> dict:
    """One cell: ``clients`` closed-loop clients on ``target`` (a Server or the RawEngine)."""
    max_tokens = 1 if one_token else model["max_tokens"]
    requests = requests_per_client(model, clients, one_token, scale)
    cpu0, client0, busy0 = target.cpu_seconds(), _client_cpu(), _machine_busy_seconds()
    engine0 = target.health() if system != "raw" else None
    if system == "raw":
        out = target.cell(concurrency=clients, requests=requests, max_tokens=max_tokens,
                          messages=[{"role": "user", "content": model["prompt"]}])
        results, wall = out["requests"], out["wall_s"]
    else:
        stream = system != "server-json" and not one_token
        results, wall = asyncio.run(_http_cell(target, model, clients, requests, max_tokens, stream))
    cpu1, client1, busy1 = target.cpu_seconds(), _client_cpu(), _machine_busy_seconds()
    engine = {}
    if engine0 is not None:  # the server's engine counters (/health): how its batches formed
        engine1 = target.health()
        steps = engine1["steps"] - engine0["steps"]
        engine = {"engine_steps": steps, "engine_reforms": engine1["reforms"] - engine0["reforms"],
                  "engine_reprefilled_tokens": engine1["reprefilled_tokens"] - engine0["reprefilled_tokens"],
                  "tokens_per_step": (engine1["tokens_generated"] - engine0["tokens_generated"]) / steps if steps else None}
    good = [r for r in results if r["ok"]]
    tokens = sum(r["completion_tokens"] for r in good)
    ttfts = [r["ttft"] for r in good if r.get("ttft") is not None]
    itls = [r["itl"] for r in good if r.get("itl") is not None]
    server_cpu = cpu1 - cpu0
    return {
        "system": system, "clients": clients, "one_token": one_token, "requests": len(results),
        "failed": len(results) - len(good),
        "errors": sorted({str(r.get("error", r.get("status"))) for r in results if not r["ok"]})[:3],
        "wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": len(good) / wall,
        "prompt_tokens": sorted({r["prompt_tokens"] for r in good}),
        "ttft_ms_p50": _pct(ttfts, 50), "ttft_ms_p95": _pct(ttfts, 95),
        "itl_ms_p50": _pct(itls, 50), "itl_ms_p95": _pct(itls, 95),
        "cpu_s_per_1000_tokens": 1000 * server_cpu / tokens if tokens else None,
        "process_cpu_pct": 100 * server_cpu / wall, "client_cpu_pct": 100 * (client1 - client0) / wall,
        "machine_busy_pct": 100 * (busy1 - busy0) / wall, **engine,
    }


CELL_OVERHEAD_S = 1.0  # waiting for quiet (at least half a second) and reading /health, per cell


def plan(model: dict, warm: dict, concurrency: list[int], rounds: int, pairs: int,
         budget_s: float) -> tuple[float, int, float]:
    """(cell scale, rounds, estimated seconds): the largest cells (at most full size) and
    then the most rounds (at most ``rounds``, at least 2) whose estimated run fits
    ``budget_s``. Cells shrink only to ``min_scale`` (below it a cell is too few requests
    to say anything); past that, rounds go. ``warm``: per system, the warm-up's seconds
    per output token and per 1-token request at 4 clients; one client is taken as half
    as fast (no batching)."""

    def cell_s(system: str, clients: int, one_token: bool, scale: float) -> float:
        per_token, per_request = warm[system]
        requests = requests_per_client(model, clients, one_token, scale) * clients
        work = requests * per_request if one_token else requests * model["tokens_per_request"] * per_token
        return work * (2.0 if clients < 4 else 1.0) + CELL_OVERHEAD_S

    def estimate(scale: float, rounds: int) -> float:
        total = rounds * sum(cell_s(system, clients, one_token, scale)
                             for clients in concurrency for system in warm
                             for one_token in ((False, True) if system != "server-json" else (False,)))
        if pairs and 8 in concurrency:
            total += pairs * sum(cell_s(system, 8, False, scale) for system in ("server", "no-keys"))
        return total

    scale = 1.0
    while estimate(scale, rounds) > budget_s and scale * 0.9 >= model["min_scale"]:
        scale *= 0.9
    while estimate(scale, rounds) > budget_s and rounds > 2:
        rounds -= 1
    return scale, rounds, estimate(scale, rounds)


def run_model(name: str, model: dict, concurrency: list[int], rounds: int, workdir: Path,
              args: argparse.Namespace, budget_s: float) -> dict:
    path = str(ROOT / model["path"])
    if not (Path(path) / "genai_config.json").is_file():
        raise SystemExit(f"{model['path']} is missing: run make {'bench-model' if name == 'bench' else 'demo-model'}")
    env = {"MAX_BATCH_SIZE": str(BATCH), "METRICS_ALLOWED_IPS": ""}
    print(f"\n== {name} model ({model['path']}): starting raw engine and 3 servers", flush=True)
    raw = RawEngine(path, workdir / f"raw-{name}.log")
    servers = {
        "server": Server(f"{name}-keys", workdir, path, True, model["id"], env),
        "no-keys": Server(f"{name}-nokeys", workdir, path, False, model["id"], env),
        "naive": Server(f"{name}-naive", workdir, path, True, model["id"],
                        dict(env, ENGINE_WORKER_CLASS="bench.naive.GeneratorWorker")),
    }
    targets = {"raw": raw, "server": servers["server"], "server-json": servers["server"],
               "no-keys": servers["no-keys"], "naive": servers["naive"]}
    everything = [raw, *servers.values()]
    cells = []
    try:
        for server in servers.values():
            server.wait_ready()
        # Warm-up (connections, first batches, database pages), which also times each
        # system to size the cells so that the whole run keeps to its time budget.
        warm = {}
        for system, target in targets.items():
            gen = measure(system, target, model, 4, scale=0.5)
            one = measure(system, target, model, 4, one_token=True, scale=0.5) if system != "server-json" else gen
            warm[system] = (gen["wall_s"] / max(1, gen["completion_tokens"]), one["wall_s"] / max(1, one["requests"]))
        model = dict(model, tokens_per_request=gen["completion_tokens"] / max(1, gen["requests"]))  # any system's
        pairs = args.key_pairs if name == "demo" else 0
        scale, rounds, estimate = plan(model, warm, concurrency, rounds, pairs, budget_s)
        print(f"{name}: {rounds} rounds, cells at {scale:.2f} x their full size (estimated {estimate / 60:.1f} min, "
              f"budget {budget_s / 60:.1f} min)", flush=True)
        for rnd in range(rounds):
            for clients in concurrency:
                for system, target in targets.items():
                    for one_token in ((False, True) if system != "server-json" else (False,)):
                        wait_for_quiet(everything, args.quiet_threshold, args.quiet_patience)
                        cell = measure(system, target, model, clients, one_token=one_token, scale=scale)
                        cell["round"] = rnd
                        cells.append(cell)
                        what = (f"{cell['requests_per_s']:.1f} req/s (1-token)" if one_token else
                                f"{cell['tokens_per_s']:.1f} tok/s, TTFT p50 "
                                f"{cell['ttft_ms_p50'] if cell['ttft_ms_p50'] is not None else float('nan'):.1f} ms")
                        print(f"{name} round {rnd + 1} {system:11s} x{clients:<2d}: {what}"
                              f"{'  FAILED ' + str(cell['failed']) + ' ' + str(cell['errors']) if cell['failed'] else ''}",
                              flush=True)
        # The cost of keys and accounting, a few percent at most, is smaller than the drift of
        # a shared machine between cells a few seconds apart: measured again as pairs of
        # back-to-back cells (server, no-keys; the order alternating), judged on the
        # median of the pairs' ratios.
        key_pairs = []
        if pairs and 8 in concurrency:
            for i in range(pairs):
                pair = {}
                for system in (("server", "no-keys") if i % 2 == 0 else ("no-keys", "server")):
                    wait_for_quiet(everything, args.quiet_threshold, args.quiet_patience)
                    pair[system] = measure(system, targets[system], model, 8, scale=scale)["tokens_per_s"]
                key_pairs.append(pair["server"] / pair["no-keys"])
                print(f"{name} keys on/off pair {i + 1}: {key_pairs[-1]:.3f}", flush=True)
        peaks = {"raw": peak_rss_mb(raw.proc.pid), **{s: peak_rss_mb(servers[s].proc.pid) for s in servers}}
        peaks["server-json"] = peaks["server"]
        batch_limit = servers["server"].health().get("batch_limit")
    finally:
        raw.stop()
        for server in servers.values():
            server.stop()
    return {"model": name, "path": model["path"], "prompt": model["prompt"], "max_tokens": model["max_tokens"],
            "peak_rss_mb": peaks, "server_batch_limit": batch_limit, "cells": cells, "key_pairs": key_pairs,
            "cell_scale": scale, "rounds": rounds, "estimated_s": estimate,
            "tokens_per_cell": round(model["tokens_per_cell"] * scale),
            "one_token_requests": math.ceil(model["one_token_requests"] * scale),
            "summary": summarize(cells, concurrency)}


def _stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _median_ci95(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median (seeded: the same pairs, the same interval).
    The pairs' spread is wide (a cell of a second or two on a 2-core machine), so the
    median alone does not say how well it is known."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


FIGURES = ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95", "cpu_s_per_1000_tokens",
           "process_cpu_pct", "client_cpu_pct")


def summarize(cells: list[dict], concurrency: list[int]) -> dict:
    out: dict = {}
    for system in SYSTEMS:
        for clients in concurrency:
            mine = [c for c in cells if c["system"] == system and c["clients"] == clients]
            gen = [c for c in mine if not c["one_token"]]
            one = [c for c in mine if c["one_token"]]
            entry = {k: _stat([c[k] for c in gen]) for k in FIGURES}
            entry["one_token_requests_per_s"] = _stat([c["requests_per_s"] for c in one])
            entry["failed"] = sum(c["failed"] for c in mine)
            out[f"{system}@{clients}"] = entry
    return out


def ratio(cells: list[dict], a: str, b: str, clients: int, figure: str = "tokens_per_s", *,
          difference: bool = False) -> dict:
    """a/b (or a-b) of ``figure``, per round; median and min-max over the rounds."""
    values = []
    for rnd in sorted({c["round"] for c in cells}):
        pick = {c["system"]: c[figure] for c in cells
                if c["round"] == rnd and c["clients"] == clients and not c["one_token"]}
        if pick.get(a) is not None and pick.get(b) is not None:
            values.append(pick[a] - pick[b] if difference else pick[a] / pick[b])
    return _stat(values) or {"median": float("nan"), "min": float("nan"), "max": float("nan")}


def targets(models: dict) -> list[dict]:
    """The issue's targets. Throughput and latency ratios are judged on the benchmark model
    (realistic compute per token); the cost of keys and accounting on the demo model, as the
    issue names it. The same ratios on the other model are printed for information."""
    out = []

    def add(label, model, value, passed, unit="x"):
        if value["median"] != value["median"]:  # NaN: a cell it needs was not measured
            passed = None
        out.append({"target": label, "model": model, "value": value, "pass": passed, "unit": unit})

    for name, result in models.items():
        cells = result["cells"]
        judged = name == "bench"
        r1 = ratio(cells, "server", "raw", 1)
        add("single stream: server tokens/s >= 0.97 x raw engine", name, r1, r1["median"] >= 0.97 if judged else None)
        r8 = ratio(cells, "server", "raw", 8)
        batch = result["server_batch_limit"] or 0
        # The issue asks for this "at batch >= 8"; the engine is configured for 16 but its CPU
        # scheduler serves `batch` sequences a step (4 on onnxruntime-genai 0.18), raw as served.
        add(f"8 streams: server >= 0.90 x raw engine (batch {BATCH} configured, {batch} served per step)", name, r8,
            r8["median"] >= 0.90 if judged else None)
        n8 = ratio(cells, "server", "naive", 8)
        add("8 streams: server >= 1.5 x naive baseline", name, n8, n8["median"] >= 1.5 if judged else None)
        t1 = ratio(cells, "server", "raw", 1, "ttft_ms_p50", difference=True)
        add("TTFT p50 at 1 stream: server - raw <= 10 ms", name, t1, t1["median"] <= 10 if judged else None, "ms")
        k8 = _stat(result.get("key_pairs") or []) or ratio(cells, "server", "no-keys", 8)
        if len(result.get("key_pairs") or []) >= 5:
            k8["ci95"] = _median_ci95(result["key_pairs"])
        pairs = f"{len(result['key_pairs'])} back-to-back pairs" if result.get("key_pairs") else "rounds"
        add(f"8 streams: keys + limits + accounting cost <= 5% (server >= 0.95 x no-keys; over {pairs})", name, k8,
            k8["median"] >= 0.95 if name == "demo" else None)
    return out


def _fmt(stat: dict | None, spec: str = "{:.0f}") -> str:
    if stat is None:
        return "–"
    ci = f"; 95% CI of the median {spec.format(stat['ci95'][0])}–{spec.format(stat['ci95'][1])}" if "ci95" in stat else ""
    return f"{spec.format(stat['median'])} ({spec.format(stat['min'])}–{spec.format(stat['max'])}{ci})"


def markdown(report: dict) -> str:
    lines = [f"# `make bench`, {report['date']}", "",
             f"Machine: {report['machine']['cpu_count']} cores ({report['machine']['cpu_model']}), "
             f"Python {report['machine']['python']}, onnxruntime-genai "
             f"{report['machine']['packages'].get('onnxruntime-genai')}, commit {report['machine']['git_commit'][:10]}"
             f"{' (dirty)' if report['machine']['git_dirty'] else ''}. Engine batch size {BATCH}. "
             f"Interleaved rounds: {_rounds(report)}; each figure is the median (min–max) over the rounds. "
             f"Run took {report['elapsed_s'] / 60:.1f} min.", "", "Systems:", ""]
    lines += [f"- **{k}**: {v}" for k, v in SYSTEMS.items()]
    lines += ["", "## Targets", "", "| target | model | measured (median, min–max) | verdict |",
              "|---|---|---|---|"]
    for t in report["targets"]:
        v = t["value"]
        spec = "{:.1f} ms" if t["unit"] == "ms" else "{:.3f}"
        verdict = "info" if t["pass"] is None else ("**PASS**" if t["pass"] else "**FAIL**")
        lines.append(f"| {t['target']} | {t['model']} | {_fmt(v, spec)} | {verdict} |")
    for name, result in report["models"].items():
        s = result["summary"]
        lines += ["", f"## {name} model (`{result['path']}`): \"{result['prompt']}\", max_tokens {result['max_tokens']}",
                  "", f"Cells of ~{result['tokens_per_cell']} output tokens and {result['one_token_requests']} 1-token "
                  f"requests ({result['cell_scale']:.2f} x full size, to keep the run within its time budget; at least "
                  f"one request per client).", "", "| clients | system | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | "
                  "1-token req/s | CPU s / 1000 tok | peak RSS MB |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for clients in report["concurrency"]:
            for system in SYSTEMS:
                e = s[f"{system}@{clients}"]
                failed = f" ({e['failed']} failed)" if e["failed"] else ""
                lines.append(
                    f"| {clients} | {system}{failed} | {_fmt(e['tokens_per_s'])} | {_fmt(e['ttft_ms_p50'], '{:.1f}')} "
                    f"| {_fmt(e['ttft_ms_p95'], '{:.1f}')} | {_fmt(e['itl_ms_p50'], '{:.2f}')} "
                    f"| {_fmt(e['itl_ms_p95'], '{:.2f}')} | {_fmt(e['one_token_requests_per_s'], '{:.1f}')} "
                    f"| {_fmt(e['cpu_s_per_1000_tokens'], '{:.2f}')} | {result['peak_rss_mb'][system]:.0f} |")
    lines += ["", "TTFT: request sent → first token (raw: begin_turn → first token event). ITL: per request, "
              "(end of the turn − first token) / (tokens − 1). server-json has no TTFT. CPU s / 1000 tok: CPU time "
              "of the serving process (all threads; the HTTP client excluded). Peak RSS: the process's VmHWM "
              "(server and server-json are one process). The HTTP client runs on the same cores; its CPU share "
              "is in the JSON report."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    xs = report["concurrency"]
    for col, name in enumerate(names):
        s = report["models"][name]["summary"]
        for row, (figure, label) in enumerate((("tokens_per_s", "output tokens/s"), ("ttft_ms_p50", "TTFT p50 (ms)"))):
            ax = axes[row][col]
            for system in PLOTTED:
                ys = [(s[f"{system}@{c}"][figure] or {}).get("median") for c in xs]
                ax.plot(xs, ys, marker="o", label=system)
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(label)
            ax.set_title(f"{name} model: {label}")
            if figure == "ttft_ms_p50":
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle(f"llmserver make bench, {report['date']}, {report['machine']['cpu_count']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _rounds(report: dict) -> str:
    return ", ".join(f"{name} model {result['rounds']}" for name, result in report["models"].items())


def print_targets(report: dict) -> None:
    print(f"\nTargets (median over the rounds ({_rounds(report)}) or the pairs named, min–max in brackets):")
    for t in report["targets"]:
        v = t["value"]
        spec = "{:+.1f} ms" if t["unit"] == "ms" else "{:.3f}"
        verdict = "info" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"  [{verdict:4s}] {t['model']:5s} {t['target']}: {_fmt(v, spec)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bench,demo", help="comma-separated: bench, demo")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=14,
                        help="time budget for the whole run: cells shrink (never grow) to keep to it")
    parser.add_argument("--key-pairs", type=int, default=40,
                        help="demo model: back-to-back (server, no-keys) pairs at 8 clients for the accounting cost")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet-threshold", type=float, default=25,
                        help="before each cell, wait until other processes use less than this %% of one core")
    parser.add_argument("--quiet-patience", type=float, default=10, help="seconds to wait for quiet at most")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    started = time.monotonic()
    models = {}
    names = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="llmserver-bench-") as tmp:
        for i, name in enumerate(names):
            # Each model's share of what is left, after ~40 s per model for starting up.
            left = args.minutes * 60 - (time.monotonic() - started) - 40 * (len(names) - i)
            share = SHARE[name] / sum(SHARE[n] for n in names[i:])
            models[name] = run_model(name, MODELS[name], concurrency, args.rounds, Path(tmp), args, left * share)
    date = datetime.date.today().isoformat()
    report = {"date": date, "elapsed_s": time.monotonic() - started, "machine": machine(), "systems": SYSTEMS,
              "rounds_asked": args.rounds, "concurrency": concurrency, "batch_size": BATCH, "models": models}
    report["targets"] = targets(models)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{date}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{date}.md").write_text(markdown(report))
    plot(report, args.out / f"{date}.png")
    print(f"\nwrote {args.out}/{date}.json, .md, .png ({report['elapsed_s'] / 60:.1f} min)")
    print_targets(report)


if __name__ == "__main__":
    sys.exit(main())
