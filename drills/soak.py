"""``make soak``: many clients for minutes, then a check that nothing was lost or leaked.

64 clients (by default) loop for 2 minutes against one real server on the demo model,
over loopback. Each request is drawn from a seeded mix: chat or text completions,
streamed or not, "Count from 1 to n" with n in 1..40 (an answer known word for word),
sometimes a ``max_tokens`` below n; about a fifth of all requests are streams the client
leaves after a few chunks. Most clients use unlimited keys; some share keys driven over
a concurrency limit, a requests-per-minute limit and a token budget, and back off for
the ``Retry-After`` they are given (at most a second, to keep the pressure on).

Afterwards, from the database and /health:

- no 5xx, no transport error, no in-stream error;
- every answer the client read to its end is the exact expected text;
- exactly one usage record per request sent, with the client's status (429s with their
  code), and for every completed request the completion tokens the client received,
  counted by the soak with the model's own tokenizer (independently of the server);
  a stream the client left is recorded as disconnected with at least the tokens it got;
- no lease of any soak key left, the engine's batch and queue empty;
- the server's resident memory after warm-up (the first quarter of the run) grows by no
  more than ``RSS_GROWTH_BOUND_MB``.

``run_soak()`` is what ``make soak`` and the suite's shortened run (tests/test_soak.py)
share; ``main()`` sets up a database and a server of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "llmserver-demo"
# Resident memory may grow by this much from the end of warm-up to the end of the run: a
# leak of even a few kB per request would pass it within a 2-minute soak (thousands of
# requests); allocator noise and the database's caches stay well under it.
RSS_GROWTH_BOUND_MB = 24.0
DISCONNECT_SHARE = 0.2  # of all requests: streams the client leaves mid-way

# Clients per key group: most on unlimited keys, the rest on keys they drive over a limit.
KEY_GROUPS = {
    "open": {"clients": 48, "keys": 8, "limits": {}},
    "concurrency": {"clients": 8, "keys": 1, "limits": {"max_concurrency": 2}},
    "per-minute": {"clients": 4, "keys": 1, "limits": {"requests_per_minute": 30}},
    "budget": {"clients": 4, "keys": 1, "limits": {"token_budget": 400, "budget_period": "day"}},
}


def completion_prompt(content: str) -> str:
    """The demo model's chat template around one user turn, for /v1/completions."""
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def count_answer(n: int) -> str:
    return " ".join(str(i) for i in range(1, n + 1))


@dataclass
class Outcome:
    """One request as the client saw it."""

    request_id: str
    group: str
    endpoint: str
    streamed: bool
    expected: str  # the whole answer, if read to the end
    status: int = 0
    text: str = ""
    left_early: bool = False  # the client closed the stream mid-way
    error: str = ""  # a transport error, an in-stream error, or a wrong body
    code: str = ""  # the error code of a 4xx
    server_usage: int | None = None  # completion_tokens the server reported
    leave_after: int | None = None  # content chunks to read before leaving, if it leaves
    retry_after: float = 0.0


@dataclass
class Soak:
    base_url: str
    secrets: dict[str, list[str]]  # group -> the secrets of its keys
    seconds: float
    clients: int = 64
    seed: int = 1
    server_pid: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    outcomes: list[Outcome] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)
    cut_short: int = 0  # streams the server recorded as disconnected (set by check())

    def client_groups(self) -> list[str]:
        """Each client's key group, in proportion to KEY_GROUPS for any client count."""
        total = sum(g["clients"] for g in KEY_GROUPS.values())
        groups = []
        for name, group in KEY_GROUPS.items():
            groups += [name] * max(1, round(group["clients"] * self.clients / total))
        return groups[: self.clients]

    async def drive(self) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        started = time.monotonic()
        deadline = started + self.seconds
        sampler = asyncio.create_task(self._sample_rss(started))
        clients = [self._client(i, group, deadline) for i, group in enumerate(self.client_groups())]
        await asyncio.gather(*clients)
        sampler.cancel()
        self._record_rss(started)

    async def _client(self, index: int, group: str, deadline: float) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        secrets = self.secrets[group]
        secret = secrets[index % len(secrets)]
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=120) as client:
            count = 0
            while time.monotonic() < deadline:
                outcome, request = self._draw(rng, group, f"soak-{self.run_id}-{index}-{count}")
                count += 1
                self.outcomes.append(outcome)
                await _send(client, outcome, request)
                if outcome.status == 429:
                    await asyncio.sleep(min(1.0, outcome.retry_after))

    def _draw(self, rng: random.Random, group: str, request_id: str) -> tuple[Outcome, dict]:
        n = rng.randint(1, 40)
        limit = rng.randint(1, n) if rng.random() < 0.3 else None
        streamed = rng.random() < 0.5
        chat = rng.random() < 0.6
        content = f"Count from 1 to {n}."
        body = {"model": MODEL_ID, "stream": streamed}
        if chat:
            body["messages"] = [{"role": "user", "content": content}]
        else:
            body["prompt"] = completion_prompt(content)
        if limit is not None:
            body["max_tokens"] = limit
        if streamed:
            body["stream_options"] = {"include_usage": True}
        # Leave 2 in 5 streams: a fifth of all requests.
        leave_after = rng.randint(1, 3) if streamed and rng.random() < 2 * DISCONNECT_SHARE else None
        outcome = Outcome(request_id, group, "chat.completions" if chat else "completions", streamed,
                          count_answer(min(n, limit or n)), leave_after=leave_after)
        return outcome, body

    async def _sample_rss(self, started: float) -> None:
        while True:
            self._record_rss(started)
            await asyncio.sleep(1.0)

    def _record_rss(self, started: float) -> None:
        if self.server_pid is not None:
            self.rss_mb.append((time.monotonic() - started, resident_mb(self.server_pid)))


async def _send(client: httpx.AsyncClient, outcome: Outcome, body: dict) -> None:
    path = "/v1/chat/completions" if outcome.endpoint == "chat.completions" else "/v1/completions"
    headers = {"X-Request-ID": outcome.request_id}
    try:
        if outcome.streamed:
            async with client.stream("POST", path, json=body, headers=headers) as response:
                outcome.status = response.status_code
                if response.status_code == 200:
                    await _read_stream(response, outcome)
                else:
                    _read_error(outcome, response, await response.aread())
        else:
            response = await client.post(path, json=body, headers=headers)
            outcome.status = response.status_code
            if response.status_code == 200:
                data = response.json()
                choice = data["choices"][0]
                outcome.text = choice["message"]["content"] if "message" in choice else choice["text"]
                outcome.server_usage = data["usage"]["completion_tokens"]
            else:
                _read_error(outcome, response, response.content)
    except httpx.HTTPError as exc:
        outcome.error = f"transport: {exc!r}"


async def _read_stream(response: httpx.Response, outcome: Outcome) -> None:
    chunks = 0
    pieces = []
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            outcome.error = f"in-stream error: {event['error']}"
            break
        if event.get("usage"):
            outcome.server_usage = event["usage"]["completion_tokens"]
        for choice in event["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            if piece:
                pieces.append(piece)
                chunks += 1
        if outcome.leave_after is not None and chunks >= outcome.leave_after:
            outcome.left_early = True
            break  # leaving the block closes the connection mid-stream
    outcome.text = "".join(pieces)


def _read_error(outcome: Outcome, response: httpx.Response, content: bytes) -> None:
    try:
        error = json.loads(content)["error"]
        outcome.code = error["code"] or ""
    except (ValueError, KeyError, TypeError):
        outcome.error = f"not an OpenAI error body: {content[:200]!r}"
    outcome.retry_after = float(response.headers.get("Retry-After", 0) or 0)


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- the checks, from the database and /health ----------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check(soak: Soak, tokenizer, *, settle_timeout: float = 30.0) -> list[Check]:
    """Read back what the server recorded and judge it; the caller prints or asserts."""
    from accounts.models import Lease

    outcomes = soak.outcomes
    sent = {o.request_id: o for o in outcomes}
    prefix = f"soak-{soak.run_id}-"
    records = _wait_for_records(prefix, len(sent), settle_timeout)
    per_id = Counter(r.request_id for r in records)
    soak.cut_short = sum(r.client_disconnected for r in records)
    by_id = {r.request_id: r for r in records}
    checks = []

    server_errors = [o for o in outcomes if o.status >= 500]
    other = [o for o in outcomes if o.status not in (200, 429) and o.status < 500]
    failed = [o for o in outcomes if o.error]
    checks.append(Check("no 5xx", not server_errors, f"{len(server_errors)} 5xx"))
    checks.append(Check("only 200 and 429", not other, _first(other, lambda o: f"{o.request_id}: {o.status} {o.code}")))
    checks.append(Check("no transport or in-stream error", not failed, _first(failed, lambda o: f"{o.request_id}: {o.error}")))

    completed = [o for o in outcomes if o.status == 200 and not o.left_early and not o.error]
    wrong_text = [o for o in completed if o.text != o.expected]
    checks.append(Check("every completed answer exact", not wrong_text,
                        _first(wrong_text, lambda o: f"{o.request_id}: {o.text!r} != {o.expected!r}")))

    missing = [i for i in sent if per_id[i] == 0]
    doubled = [i for i, c in per_id.items() if c > 1]
    stray = [i for i in per_id if i not in sent]
    checks.append(Check("one usage record per request", not (missing or doubled or stray),
                        f"{len(records)} records for {len(sent)} requests; missing {missing[:3]}, "
                        f"doubled {doubled[:3]}, unknown {stray[:3]}"))

    wrong = []
    for o in outcomes:
        record = by_id.get(o.request_id)
        if record is None:
            continue
        received = _tokens(tokenizer, o.text)
        if o.status == 429:
            bad = (record.status_code, record.error_code, record.completion_tokens) != (429, o.code, 0)
        elif o.left_early:
            # Cut short where the client left; or, if the whole answer had already been
            # written to the socket when it left, recorded as the complete answer.
            cut = record.client_disconnected and record.completion_tokens >= received
            whole = not record.client_disconnected and record.completion_tokens == _tokens(tokenizer, o.expected)
            bad = record.status_code != 200 or not (cut or whole)
        elif o.status == 200:
            bad = (record.status_code, record.client_disconnected, record.completion_tokens) != (200, False, received) \
                or (o.server_usage is not None and o.server_usage != received)
        else:
            continue  # already a failed check above
        if bad:
            wrong.append((o, record, received))
    checks.append(Check("records match what clients received", not wrong, _first(wrong, lambda w: (
        f"{w[0].request_id}: client {w[0].status} {w[2]} tokens (left early: {w[0].left_early}), record "
        f"{w[1].status_code} {w[1].error_code!r} {w[1].completion_tokens} tokens disconnected={w[1].client_disconnected}"))))

    gone = _wait_for(lambda: not Lease.objects.filter(request_id__startswith=prefix).exists(), 10)
    left = Lease.objects.filter(request_id__startswith=prefix).count()
    checks.append(Check("no lease left", bool(gone), f"{left} leases still held"))

    idle = _wait_for(lambda: _idle_engine(soak.base_url), 10)
    engine = _engine(soak.base_url)
    checks.append(Check("engine batch and queue empty", bool(idle),
                        f"running {engine['running']}, waiting {engine['waiting']}"))

    if soak.rss_mb:
        growth, after_warmup, last = rss_growth(soak)
        checks.append(Check(f"memory flat after warm-up (<= {RSS_GROWTH_BOUND_MB:.0f} MB)", growth <= RSS_GROWTH_BOUND_MB,
                            f"{after_warmup:.0f} MB -> {last:.0f} MB ({growth:+.1f} MB)"))
    return checks


def rss_growth(soak: Soak) -> tuple[float, float, float]:
    """Growth from the end of warm-up (first quarter) to the highest sample after it."""
    warmup_end = soak.seconds / 4
    after = [mb for t, mb in soak.rss_mb if t >= warmup_end] or [soak.rss_mb[-1][1]]
    return max(after) - after[0], after[0], after[-1]


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text)) if text else 0


def _wait_for_records(prefix: str, expected: int, timeout: float) -> list:
    from accounts.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        records = list(UsageRecord.objects.filter(request_id__startswith=prefix))
        if len(records) >= expected or time.monotonic() > deadline:
            time.sleep(0.5)  # a record written twice would show up now
            return list(UsageRecord.objects.filter(request_id__startswith=prefix))
        time.sleep(0.1)


def _wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    return None


def _engine(base_url: str) -> dict:
    return httpx.get(f"{base_url}/health", timeout=10).json()["models"][0]


def _idle_engine(base_url: str) -> bool:
    engine = _engine(base_url)
    return engine["running"] == 0 and engine["waiting"] == 0


def _first(items: list, describe) -> str:
    return describe(items[0]) + (f" (and {len(items) - 1} more)" if len(items) > 1 else "") if items else "none"


def summary(soak: Soak, checks: list[Check]) -> str:
    """The table ``make soak`` prints."""
    outcomes = soak.outcomes
    by_status = Counter(o.status for o in outcomes)
    codes = Counter(o.code for o in outcomes if o.status == 429)
    lines = [
        f"soak: {soak.clients} clients for {soak.seconds:.0f} s, seed {soak.seed}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests sent | {len(outcomes)} |",
        f"| answered 200 | {by_status[200]} |",
        f"| streams the client left mid-way | {sum(o.left_early for o in outcomes)} "
        f"({soak.cut_short} cut short by the server, the rest already sent in full) |",
        f"| refused 429 | {by_status[429]} ({', '.join(f'{c} {n}' for c, n in codes.most_common())}) |",
        f"| 5xx | {sum(n for s, n in by_status.items() if s >= 500)} |",
        f"| streamed / not | {sum(o.streamed for o in outcomes)} / {sum(not o.streamed for o in outcomes)} |",
        f"| chat / completions | {sum(o.endpoint == 'chat.completions' for o in outcomes)} / "
        f"{sum(o.endpoint == 'completions' for o in outcomes)} |",
    ]
    if soak.rss_mb:
        growth, after_warmup, last = rss_growth(soak)
        lines.append(f"| server RSS: start / after warm-up / end | {soak.rss_mb[0][1]:.0f} / {after_warmup:.0f} / "
                     f"{last:.0f} MB (growth {growth:+.1f} MB, bound {RSS_GROWTH_BOUND_MB:.0f}) |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'PASS' if c.ok else 'FAIL'} | {c.detail} |" for c in checks]
    return "\n".join(lines)


def issue_keys(label: str) -> dict[str, list[str]]:
    """Keys for each group of KEY_GROUPS; returns group -> secrets."""
    from accounts.models import APIKey

    secrets = {}
    for name, group in KEY_GROUPS.items():
        secrets[name] = [APIKey.issue(name=f"soak {label} {name} {i}", **group["limits"])[1]
                         for i in range(group["keys"])]
    return secrets


def demo_tokenizer(model_path: Path):
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(model_path)))


def run_soak(base_url: str, *, seconds: float, clients: int, seed: int, server_pid: int | None,
             tokenizer) -> tuple[Soak, list[Check]]:
    soak = Soak(base_url, issue_keys(f"{seed}"), seconds, clients, seed, server_pid)
    asyncio.run(soak.drive())
    return soak, check(soak, tokenizer)


# --- make soak -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="llmserver-soak-"))
    # Its own SQLite database unless DATABASE_URL names one (PostgreSQL: the production shape).
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'soak.sqlite3'}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")
    os.environ.pop("MODELS_CONFIG", None)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    port = _free_port()
    log_path = workdir / "server.log"
    env = dict(os.environ, MODEL_PATH=settings.MODEL_PATH, MODEL_ID=MODEL_ID, LOG_LEVEL="WARNING")
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, server)
        soak, checks = run_soak(base_url, seconds=args.seconds, clients=args.clients, seed=args.seed,
                                server_pid=server.pid, tokenizer=demo_tokenizer(Path(settings.MODEL_PATH)))
    finally:
        server.terminate()
        server.wait(60)
    print(summary(soak, checks))
    print(f"\nserver log: {log_path}")
    raise SystemExit(0 if all(c.ok for c in checks) else 1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base_url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy")


if __name__ == "__main__":
    main()
