"""Where llmserver's CPU goes: ``python -m bench.profile --clients 8``

Starts llmserver on the demo model with keys, limits and accounting on (as ``make bench``
runs it), warms it, then drives ``--clients`` closed-loop clients for ``--seconds``
(streamed "Count from 1 to 40.", or 1-token non-streamed requests with ``--one-token``)
while ``py-spy record --threads --nonblocking`` samples the server process. It reports:

- CPU per thread from ``/proc/<pid>/task`` over the window (the Python threads named by
  py-spy; the rest are onnxruntime's native pool threads, which py-spy cannot see), in
  ms per output token and per request;
- each Python thread's samples by layer: the innermost frame of a sample that belongs to
  a known layer (``LAYERS``) decides it, so ``json.dumps`` called from the protocol counts
  as chunk JSON, a Twisted write called from Daphne as Daphne/Twisted;
- the top functions by own samples and the project's functions by inclusive samples.

py-spy samples wall time: a thread that is runnable but waiting for a core counts as
active, in whatever frame it stopped. Samples whose innermost frame is a system call
(``WAITING_RE``) are therefore set apart, and the layers are also given as shares of the
rest, the Python work. ``perf record -g -p <pid>`` (cycle samples, CPU only) gives the
split between onnxruntime, the interpreter and the kernel.

The raw stacks (``--format raw``, one line per distinct stack with its count) are kept
with ``--keep``, for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.accounting import CLK_TCK, ROOT, Server
from bench.client import StreamClient

MODEL = {"path": "models/demo", "id": "llmserver-demo", "prompt": "Count from 1 to 40."}

# (layer, pattern on "function (file:line)"); the first layer matched from the leaf up wins.
LAYERS = [
    ("engine step (og Engine.run)", r"\._run_engine \("),
    ("waking the event loop (call_soon_threadsafe's self-pipe write)", r"\._write_to_self \("),
    ("detokenize (TokenizerStream)", r"inference/decoding\.py|tokenizers/"),
    ("keys, limits, accounting", r"accounts/|sqlite3/|psycopg"),
    ("chunk JSON / SSE", r"json/|inference/protocol\.py"),
    ("Daphne / Twisted (HTTP)", r"daphne/|twisted/|autobahn/|llmserver/http_framing\.py"),
    ("Django / DRF / asgiref request handling",
     r"django/|rest_framework/|adrf/|asgiref/|llmserver/handlers\.py|llmserver/middleware\.py|channels/"),
    ("engine thread bookkeeping", r"inference/engine\.py"),
    ("serving and views (inference/)", r"inference/|llmserver/"),
    ("asyncio machinery (tasks, futures, call_soon)", r"asyncio/"),
    ("thread hand-off (queue, locks)", r"threading\.py|queue\.py"),
    ("logging", r"logging/"),
]
LAYER_RES = [(name, re.compile(pattern)) for name, pattern in LAYERS]
# A sample whose innermost frame is one of these is in a system call (epoll, a socket
# write, the event loop's self-pipe) or in the queue between them. py-spy counts a thread
# that is runnable but waiting for a core as active, so on a busy machine these frames
# soak up the time the thread waited after waking another; perf's cycle samples, not
# these, say what the kernel costs. Python work is the rest.
WAITING = "system call or waiting for a core (see perf)"
WAITING_RE = re.compile(r"^(?:EpollSelector\.select|_PollLikeSelector\.modify|untilConcludes"
                        r"|BaseSelectorEventLoop\._write_to_self|BaseSelectorEventLoop\._read_from_self"
                        r"|Books\._run) \(")
PROJECT = re.compile(r"\((?:inference|accounts|llmserver|chat)/")


def classify(frames: list[str]) -> str:
    if frames and WAITING_RE.search(frames[-1]):
        return WAITING
    for frame in reversed(frames):
        for name, pattern in LAYER_RES:
            if pattern.search(frame):
                return name
    return "other"


def _short(frame: str) -> str:
    """``function (path:line)`` with the path cut to its last two parts, line dropped."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    return f"{m[1]} ({'/'.join(Path(m[2]).parts[-2:])})"


def parse(raw: str) -> dict[str, dict]:
    """py-spy raw output → per thread: samples, layers, own (leaf) and inclusive counts."""
    threads: dict[str, dict] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        frames = stack.split(";")
        m = re.match(r"thread \((\d+)\): ?(.*)", frames[0])
        tid, name = (m[1], m[2] or "?") if m else ("?", frames[0])
        frames = frames[1:]
        t = threads.setdefault(tid, {"name": name, "samples": 0, "layers": collections.Counter(),
                                     "own": collections.Counter(), "inclusive": collections.Counter()})
        t["samples"] += count
        t["layers"][classify(frames)] += count
        if frames:
            t["own"][_short(frames[-1])] += count
        for frame in {_short(f) for f in frames if PROJECT.search(f)}:
            t["inclusive"][frame] += count
    return threads


def thread_cpu(pid: int) -> dict[str, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


async def drive(server: Server, clients: int, seconds: float, one_token: bool, prompt: str = MODEL["prompt"],
                max_tokens: int = 64) -> dict:
    body = {"model": MODEL["id"], "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": 1 if one_token else max_tokens}
    if not one_token:
        body.update(stream=True, stream_options={"include_usage": True})
    deadline = time.perf_counter() + seconds
    totals = {"requests": 0, "tokens": 0, "failed": 0}

    async def client():
        connection = StreamClient("127.0.0.1", server.port, {"Authorization": f"Bearer {server.key}"})
        call = connection.complete if one_token else connection.stream
        try:
            while time.perf_counter() < deadline:
                result = await call("/v1/chat/completions", body)
                totals["requests"] += 1
                totals["tokens"] += result.get("completion_tokens", 0)
                totals["failed"] += not result["ok"]
        finally:
            await connection.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    totals["wall_s"] = time.perf_counter() - t0
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--one-token", action="store_true", help="1-token non-streamed requests")
    parser.add_argument("--idle", action="store_true",
                        help="sample idle threads too (where a thread waits, e.g. the engine for a batch to gather)")
    parser.add_argument("--keep", type=Path, help="write py-spy's raw stacks here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--prompt", default=MODEL["prompt"],
                        help='the user message (e.g. "Count from 1 to 200." for ~200 tokens a request)')
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="llmserver-profile-") as tmp:
        workdir = Path(tmp)
        server = Server("profile", workdir, str(ROOT / MODEL["path"]), True, MODEL["id"],
                        {"MAX_BATCH_SIZE": "16", "METRICS_ALLOWED_IPS": ""})
        try:
            server.wait_ready()
            asyncio.run(drive(server, args.clients, 2, args.one_token, args.prompt, args.max_tokens))  # warm-up
            raw_path = args.keep or workdir / "stacks.txt"
            spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--rate", str(args.rate),
                                    "--duration", str(int(args.seconds + 1)), "--format", "raw", "--threads",
                                    "--nonblocking", "--output", str(raw_path), *(["--idle"] if args.idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)  # py-spy attached
            cpu0 = thread_cpu(server.proc.pid)
            totals = asyncio.run(drive(server, args.clients, args.seconds, args.one_token, args.prompt, args.max_tokens))
            cpu1 = thread_cpu(server.proc.pid)
            spy.wait(60)
            threads = parse(raw_path.read_text())
        finally:
            server.stop()
    cpu = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    total_cpu = sum(cpu.values())
    per = "request" if args.one_token else "1000 tokens"
    unit = totals["requests"] if args.one_token else totals["tokens"] / 1000
    print(f"{args.clients} client(s), {'1-token requests' if args.one_token else 'streams'}: "
          f"{totals['requests']} requests, {totals['tokens']} tokens in {totals['wall_s']:.1f} s "
          f"({totals['requests'] / totals['wall_s']:.0f} req/s, {totals['tokens'] / totals['wall_s']:.0f} tok/s), "
          f"{totals['failed']} failed")
    print(f"server CPU {total_cpu:.2f} s = {100 * total_cpu / totals['wall_s']:.0f}% of a core; "
          f"{1000 * total_cpu / unit:.2f} ms per {per}")
    named = {tid: t["name"] for tid, t in threads.items()}
    rows = sorted(cpu.items(), key=lambda kv: -kv[1])
    print("\nCPU by thread:")
    for tid, seconds in rows:
        if seconds > 0.005 * total_cpu:
            print(f"  {named.get(tid, 'native (onnxruntime pool)'):28s} {100 * seconds / total_cpu:5.1f}%  "
                  f"{1000 * seconds / unit:7.3f} ms per {per}")
    report = {"clients": args.clients, "one_token": args.one_token, **totals, "server_cpu_s": total_cpu,
              "threads": {}}
    for tid, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        share = cpu.get(tid, 0.0) / total_cpu if total_cpu else 0.0
        working = t["samples"] - t["layers"][WAITING]
        print(f"\n{t['name']} ({t['samples']} samples, {100 * share:.1f}% of the server's CPU), by layer "
              f"(of all samples; of Python work):")
        for layer, n in t["layers"].most_common():
            work = "" if layer == WAITING or not working else f"  {100 * n / working:5.1f}%"
            print(f"  {100 * n / t['samples']:5.1f}%{work}  {layer}")
        print("  top functions by own samples:")
        for frame, n in t["own"].most_common(args.top):
            print(f"    {100 * n / t['samples']:5.1f}%  {frame}")
        print("  project functions by inclusive samples:")
        for frame, n in t["inclusive"].most_common(args.top):
            print(f"    {100 * n / t['samples']:5.1f}%  {frame}")
        report["threads"][t["name"]] = {"samples": t["samples"], "cpu_share": share,
                                        "layers": dict(t["layers"].most_common()),
                                        "own": dict(t["own"].most_common(40)),
                                        "inclusive": dict(t["inclusive"].most_common(40))}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
