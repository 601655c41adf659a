"""What do API keys, limits and usage accounting cost? ``python -m bench.accounting``

Starts servers on the same model, each with a fresh database: A with keys, limits and
usage accounting on (one key, no limits set) on SQLite, B with ``REQUIRE_API_KEY=false``,
and, when a PostgreSQL server answers (``--postgres``), P: A's setup on a fresh
PostgreSQL database. All stay up for the whole run; measurements alternate A, B, P, A,
B, P, ... so drift hits them alike. What accounting costs per request is reported as
server CPU ms per request, keys on minus keys off, on SQLite (A − B) and PostgreSQL
(P − B): CPU time hardly moves when other work shares the machine, unlike throughput. One measurement is ``--concurrency`` clients,
each sending ``--requests`` streamed chat completions back to back ("Count from 1 to
40.": 40 tokens each). Tokens are the engine's own counts from the usage chunk
(``stream_options.include_usage``); TTFT is the time to the first chunk with content.

The client (asyncio, bench.client: raw HTTP/1.1, one keep-alive connection per client) shares the 2 cores with the server under
test, so its CPU time and every server's CPU time are measured for every run and
reported: if the client used a large share, the numbers say so.

Writes ``bench/results/accounting-<date>.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.client import StreamClient

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
MODEL_ID = "llmserver-demo"
PROMPT = "Count from 1 to 40."
SYSTEMS = {"A": "keys + limits + accounting, SQLite", "B": "REQUIRE_API_KEY=false",
           "P": "keys + limits + accounting, PostgreSQL"}
TARGET_8_STREAMS = 0.97  # keys on / keys off, tokens/s
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


class Server:
    def __init__(self, name: str, workdir: Path, model_path: str, accounting: bool, model_id: str = MODEL_ID,
                 extra_env: dict[str, str] | None = None, database_url: str | None = None):
        self.name, self.port, self.key = name, _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, MODEL_PATH=model_path, MODEL_ID=model_id, MAX_CONCURRENT_REQUESTS="256",
                        DATABASE_URL=database_url or f"sqlite:///{workdir / f'db-{name}.sqlite3'}", LOG_LEVEL="WARNING",
                        REQUIRE_API_KEY="true" if accounting else "false", **(extra_env or {}))
        # Each server has its own SQLite database and in-memory limits: a REDIS_URL shared
        # by several of them would mix their keys' counters.
        for variable in ("MODELS_CONFIG", "REDIS_URL"):
            self.env.pop(variable, None)
        self._manage("migrate", "--noinput")
        if accounting:
            self.key = self._create_key()
        self.log = open(workdir / f"server-{name}.log", "w")
        self.proc = subprocess.Popen([PY, "manage.py", "serve", "--port", str(self.port)], cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def _manage(self, *args: str) -> str:
        return subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def _create_key(self) -> str:
        try:
            return self._manage("createapikey", "--name", "bench").strip().splitlines()[-1]
        except subprocess.CalledProcessError:  # older checkouts: no createapikey command yet
            code = "from accounts.models import APIKey; print(APIKey.issue(name='bench')[1])"
            return self._manage("shell", "-c", code).strip().splitlines()[-1]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {self.name} exited; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server {self.name} not ready after {timeout}s; see {self.log.name}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()["models"][0]

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class ScratchPostgres:
    """A fresh PostgreSQL database on the server of ``admin_url`` (a URL of any database
    there, e.g. ``postgres://postgres@127.0.0.1:5432/postgres``), dropped on exit."""

    def __init__(self, admin_url: str):
        import psycopg

        self.admin_url, self.name = admin_url, f"llmserver_bench_accounting_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {self.name}")
            connection.execute(f"CREATE DATABASE {self.name}")
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def scratch_postgres(admin_url: str) -> ScratchPostgres | None:
    """A fresh database on that server, or None (saying why) if it does not answer."""
    if admin_url in ("", "none"):
        return None
    try:
        return ScratchPostgres(admin_url)
    except Exception as error:  # noqa: BLE001 - no server, no driver, no rights: run without P
        print(f"PostgreSQL at {admin_url} not usable ({error!r}): no P server this run", flush=True)
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _workload(server: Server, concurrency: int, requests: int, max_tokens: int) -> tuple[list, float]:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}

    async def client():
        connection = StreamClient("127.0.0.1", server.port, headers)
        try:
            return [await connection.stream("/v1/chat/completions", body) for _ in range(requests)]
        finally:
            await connection.close()

    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(client() for _ in range(concurrency)))
    return [r for rs in per_client for r in rs], time.perf_counter() - t0


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (not idle or iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_for_quiet(servers: list[Server], threshold_pct: float, patience_s: float) -> float:
    """Wait (up to ``patience_s``) until the rest of the machine stays under ``threshold_pct``
    of one core for half a second: other people's test suites on a 2-core box swamp the
    signal. Returns the foreign CPU % of the last sample."""
    deadline = time.monotonic() + patience_s
    while True:
        ours0, busy0 = sum(s.cpu_seconds() for s in servers) + _client_cpu(), _machine_busy_seconds()
        time.sleep(0.5)
        ours1, busy1 = sum(s.cpu_seconds() for s in servers) + _client_cpu(), _machine_busy_seconds()
        foreign = 200 * max(0.0, (busy1 - busy0) - (ours1 - ours0))
        if foreign < threshold_pct or time.monotonic() > deadline:
            return foreign


def measure(server: Server, others: list[Server], concurrency: int, requests: int, max_tokens: int) -> dict:
    before = server.health()
    cpu0, other0, client0 = server.cpu_seconds(), [o.cpu_seconds() for o in others], _client_cpu()
    busy0 = _machine_busy_seconds()
    results, wall = asyncio.run(_workload(server, concurrency, requests, max_tokens))
    cpu1, other1, client1 = server.cpu_seconds(), [o.cpu_seconds() for o in others], _client_cpu()
    busy1 = _machine_busy_seconds()
    ours = (cpu1 - cpu0) + (client1 - client0) + sum(b - a for a, b in zip(other0, other1))
    after = server.health()
    good = [r for r in results if r["ok"]]
    ttfts = np.array([r["ttft"] for r in good]) * 1000
    tokens = sum(r["completion_tokens"] for r in good)
    steps = after["steps"] - before["steps"]
    return {
        "system": server.name, "concurrency": concurrency, "requests": len(results), "failed": len(results) - len(good),
        "errors": sorted({r.get("error", "incomplete stream") for r in results if not r["ok"]})[:3],
        "wall_s": wall, "completion_tokens": tokens, "content_chunks": sum(r["chunks"] for r in good),
        "tokens_per_s": tokens / wall, "requests_per_s": len(good) / wall,
        "ttft_ms_p50": float(np.percentile(ttfts, 50)) if len(good) else None,
        "ttft_ms_p95": float(np.percentile(ttfts, 95)) if len(good) else None,
        "server_cpu_pct": 100 * (cpu1 - cpu0) / wall, "client_cpu_pct": 100 * (client1 - client0) / wall,
        "idle_server_cpu_pct": 100 * sum(b - a for a, b in zip(other0, other1)) / wall,
        # Everything else on the machine (other users' jobs): a noisy neighbour shows here.
        "foreign_cpu_pct": 100 * max(0.0, (busy1 - busy0) - ours) / wall,
        "server_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / max(1, len(good)),
        "engine_steps": steps, "engine_tokens": after["tokens_generated"] - before["tokens_generated"],
        "tokens_per_step": (after["tokens_generated"] - before["tokens_generated"]) / steps if steps else None,
        "engine_reforms": after.get("reforms", 0) - before.get("reforms", 0), "peak_batch": after["peak_batch"],
    }


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], concurrencies: list[int]) -> dict:
    keys = ("tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p95", "server_cpu_pct", "client_cpu_pct",
            "foreign_cpu_pct", "server_cpu_ms_per_request", "tokens_per_step")
    out = {}
    for c in concurrencies:
        for name in _systems(runs):
            mine = [r for r in runs if r["system"] == name and r["concurrency"] == c]
            out[f"{name}@{c}"] = {k: _stats([r[k] for r in mine if r[k] is not None]) for k in keys}
            out[f"{name}@{c}"]["failed"] = sum(r["failed"] for r in mine)
    return out


def _systems(runs: list[dict]) -> list[str]:
    return [name for name in SYSTEMS if any(r["system"] == name for r in runs)]


def ratio(summary: dict, c: int, keyed: str = "A") -> dict:
    a, b = summary[f"{keyed}@{c}"]["tokens_per_s"], summary[f"B@{c}"]["tokens_per_s"]
    return {"median": a["median"] / b["median"], "worst": a["min"] / b["max"], "best": a["max"] / b["min"]}


def accounting_cpu_ms(runs: list[dict], c: int, keyed: str) -> dict:
    """What keys, limits and accounting cost per request in the server's CPU: the keyed
    server's CPU ms per request minus the keyless one's, in each round, then over rounds."""
    by_round = {(r["system"], r["round"]): r["server_cpu_ms_per_request"] for r in runs if r["concurrency"] == c}
    rounds = sorted({rnd for system, rnd in by_round if system == keyed})
    return _stats([by_round[(keyed, rnd)] - by_round[("B", rnd)] for rnd in rounds if ("B", rnd) in by_round])


def markdown(runs: list[dict], concurrencies: list[int], rounds: int, requests: int, elapsed: float) -> str:
    def cell(s, fmt="{:.0f}"):
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"
    summary, systems = summarize(runs, concurrencies), _systems(runs)
    lines = [f"Median (min–max) of {rounds} interleaved runs; each run: N clients × {requests} streamed requests "
             f"of ~40 tokens. {', '.join(f'{name} = {SYSTEMS[name]}' for name in systems)}. "
             f"Run took {elapsed / 60:.1f} min.", "",
             "| streams | system | tokens/s | requests/s | TTFT p50 ms | TTFT p95 ms | server CPU %¹ | "
             "client CPU %¹ | others' CPU %¹ | server CPU ms/req | tokens/step² |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in concurrencies:
        for name in systems:
            s = summary[f"{name}@{c}"]
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            lines.append(f"| {c} | {name}{failed} | {cell(s['tokens_per_s'])} | {cell(s['requests_per_s'], '{:.1f}')} "
                         f"| {cell(s['ttft_ms_p50'], '{:.1f}')} | {cell(s['ttft_ms_p95'], '{:.1f}')} "
                         f"| {cell(s['server_cpu_pct'])} | {cell(s['client_cpu_pct'])} | {cell(s['foreign_cpu_pct'])} "
                         f"| {cell(s['server_cpu_ms_per_request'], '{:.1f}')} | {cell(s['tokens_per_step'], '{:.2f}')} |")
    lines += ["", "¹ of one core (the machine has %d); the client runs on the same cores as the server. "
              "Others: everything on the machine but this benchmark's processes (client, servers). "
              "² engine tokens per scheduler step: the mean batch size." % os.cpu_count(), ""]
    for keyed, database in (("A", "SQLite"), ("P", "PostgreSQL")):
        if keyed not in systems:
            continue
        for c in concurrencies:
            r = ratio(summary, c, keyed)
            cost = accounting_cpu_ms(runs, c, keyed)
            verdict = (f" (target ≥ {TARGET_8_STREAMS}: " + ("met" if r["median"] >= TARGET_8_STREAMS else "NOT met")
                       + ")" if c == 8 else "")
            lines.append(f"- {database}, {c} stream{'s' if c > 1 else ''}: accounting costs **{cost['median']:.2f} "
                         f"server CPU ms per request** ({keyed} − B; range {cost['min']:.2f}–{cost['max']:.2f}); "
                         f"tokens/s ratio {keyed}/B **{r['median']:.3f}** (range {r['worst']:.3f}–{r['best']:.3f})"
                         f"{verdict}")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    from importlib.metadata import version
    return {"cpu_count": os.cpu_count(), "cpu_model": next((l.split(":", 1)[1].strip() for l in
            Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor()),
            "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "packages": {p: version(p) for p in ("django", "daphne", "onnxruntime-genai", "httpx")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default="models/demo")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=40, help="requests per client per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per system and concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet-threshold", type=float, default=20,
                        help="before each run, wait until other processes use less than this %% of one core")
    parser.add_argument("--quiet-patience", type=float, default=120, help="seconds to wait for quiet at most")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
                        help="URL of a database on the PostgreSQL server for P (which gets a fresh database "
                             "of its own there, dropped at the end); 'none': no P")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    started = time.monotonic()
    postgres = scratch_postgres(args.postgres)
    with tempfile.TemporaryDirectory(prefix="bench-accounting-") as tmp:
        servers = [Server("A", Path(tmp), args.model_path, True), Server("B", Path(tmp), args.model_path, False)]
        if postgres is not None:
            servers.append(Server("P", Path(tmp), args.model_path, True, database_url=postgres.url))
        try:
            for s in servers:
                s.wait_ready()
                measure(s, [], 4, 3, args.max_tokens)  # warm-up: connections, first batches, DB pages
            runs = []
            for rnd in range(args.rounds):
                for c in concurrencies:
                    for s in servers:  # A, B, A, B, ...
                        foreign_before = wait_for_quiet(servers, args.quiet_threshold, args.quiet_patience)
                        run = measure(s, [o for o in servers if o is not s], c, args.requests, args.max_tokens)
                        run["round"], run["foreign_cpu_pct_before"] = rnd, foreign_before
                        runs.append(run)
                        print(f"round {rnd + 1} {s.name} x{c}: {run['tokens_per_s']:.0f} tok/s, "
                              f"TTFT p50 {run['ttft_ms_p50']:.1f} ms, server CPU {run['server_cpu_pct']:.0f}%, "
                              f"client CPU {run['client_cpu_pct']:.0f}%, others {run['foreign_cpu_pct']:.0f}%, failed {run['failed']}", flush=True)
        finally:
            for s in servers:
                s.stop()
            if postgres is not None:
                postgres.drop()
    elapsed = time.monotonic() - started
    summary = summarize(runs, concurrencies)
    table = markdown(runs, concurrencies, args.rounds, args.requests, elapsed)
    date = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": date, "elapsed_s": elapsed, "machine": machine(), "systems": SYSTEMS,
              "config": {k: str(v) for k, v in vars(args).items()}, "prompt": PROMPT,
              "ratio_tokens_per_s_A_over_B": {str(c): ratio(summary, c) for c in concurrencies},
              "accounting_server_cpu_ms_per_request": {
                  keyed: {str(c): accounting_cpu_ms(runs, c, keyed) for c in concurrencies}
                  for keyed in ("A", "P") if keyed in _systems(runs)},
              "summary": summary, "runs": runs}
    (args.out / f"accounting-{date}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"accounting-{date}.md").write_text(f"# Accounting overhead, {date}\n\n{table}")
    print("\n" + table)


if __name__ == "__main__":
    main()
