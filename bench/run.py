"""``make bench``: the server against its engine and against the naive baseline.

For each model (the benchmark model, ``make bench-model``, and the demo model), in one run
on one machine, it starts

- **raw**: ``og.Engine`` driven directly from Python (``bench/raw.py``, a child process);
- **server**: llmserver over HTTP with API keys, limits and usage accounting on
  (measured streamed, and non-streamed as **server-json**);
- **no-keys**: the same server with ``REQUIRE_API_KEY=false`` (streamed);
- **naive**: the original plan's design behind the same HTTP front: one ``og.Generator``
  per request, one request at a time (``bench/naive.py``), keys on (streamed);
- **peer**: the server a user would write in an afternoon: FastAPI + uvicorn, one
  ``og.Generator`` per request on a thread of its own, no batching, no keys
  (``bench/peer_fastapi.py``, in its own venv ``.venv-peer``; streamed);

the engines with the same batch size (``MAX_BATCH_SIZE``, 16). For 1, 4, 8 and 16 clients
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

Writes (``bench/report.py``) ``bench/results/<date>.json`` (every cell of every round, the machine, package
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.accounting import (PY, ROOT, Server, _client_cpu, _free_port, _machine_busy_seconds, machine,
                              process_cpu_seconds, wait_for_quiet)
from bench.client import StreamClient
from bench.report import SYSTEMS, markdown, plot, print_targets, summarize, targets

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


PEER_PY = ROOT / ".venv-peer" / "bin" / "python"


class PeerServer:
    """bench/peer_fastapi.py in its own venv (``make bench`` installs it): no keys, no
    database, no engine counters. Started, polled and stopped as a :class:`Server`."""

    key = None

    def __init__(self, name: str, workdir: Path, model_path: str):
        if not PEER_PY.is_file():
            raise SystemExit(f"{PEER_PY} is missing: run make bench (it installs .venv-peer from requirements-peer.txt)")
        self.name, self.port = name, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"server-{name}.log", "w")
        self.proc = subprocess.Popen([str(PEER_PY), "bench/peer_fastapi.py", "--model-path", model_path,
                                      "--port", str(self.port)], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    wait_ready, cpu_seconds, stop = Server.wait_ready, Server.cpu_seconds, Server.stop


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
    """One cell: ``clients`` closed-loop clients on ``target`` (a Server, the PeerServer or the RawEngine)."""
    max_tokens = 1 if one_token else model["max_tokens"]
    requests = requests_per_client(model, clients, one_token, scale)
    cpu0, client0, busy0 = target.cpu_seconds(), _client_cpu(), _machine_busy_seconds()
    engine0 = target.health() if isinstance(target, Server) else None
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
    print(f"\n== {name} model ({model['path']}): starting raw engine, 3 servers and the peer", flush=True)
    raw = RawEngine(path, workdir / f"raw-{name}.log")
    servers = {
        "server": Server(f"{name}-keys", workdir, path, True, model["id"], env),
        "no-keys": Server(f"{name}-nokeys", workdir, path, False, model["id"], env),
        "naive": Server(f"{name}-naive", workdir, path, True, model["id"],
                        dict(env, ENGINE_WORKER_CLASS="bench.naive.GeneratorWorker")),
        "peer": PeerServer(f"{name}-peer", workdir, path),
    }
    by_system = {"raw": raw, "server": servers["server"], "server-json": servers["server"],
                 "no-keys": servers["no-keys"], "naive": servers["naive"], "peer": servers["peer"]}
    everything = [raw, *servers.values()]
    cells = []
    try:
        for server in servers.values():
            server.wait_ready()
        # Warm-up (connections, first batches, database pages), which also times each
        # system to size the cells so that the whole run keeps to its time budget.
        warm = {}
        for system, target in by_system.items():
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
                for system, target in by_system.items():
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
                    pair[system] = measure(system, by_system[system], model, 8, scale=scale)["tokens_per_s"]
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
    report["targets"] = targets(models, BATCH)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{date}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{date}.md").write_text(markdown(report))
    plot(report, args.out / f"{date}.png")
    print(f"\nwrote {args.out}/{date}.json, .md, .png ({report['elapsed_s'] / 60:.1f} min)")
    print_targets(report)


if __name__ == "__main__":
    sys.exit(main())
