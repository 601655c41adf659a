"""What admission and settlement cost in CPU, per request: ``python -m
bench.accounting_micro`` (SQLite in a temporary folder; or the database of
``DATABASE_URL``, whose llmserver tables it writes to: use a scratch one).

CPU time of the whole process (every thread), not wall time: it hardly moves when other
work shares the machine. Each figure is the minimum over ``--repeat`` runs of
``--requests`` requests, in ms per request.

- **books, on an event loop**: the path a request takes. ``await books.admit(...)``
  for groups of 1 and of 8 requests arriving together, then each finished request's
  ``books.settle_later(...)``; everything waiting is written by a ``books.flush()`` at
  the end of each run. Admission and settlement together, with the accounting
  thread's wake-ups and the event loop's share; for requests one at a time, also the
  median wall time of an admission, ms (what it adds to time to first token; wall
  time, so only as steady as the machine is quiet).
- ``--holders team``: the same with a key whose owner has a token budget of their own
  and whose team has a token budget and a per-minute limit (three holders a request).
- **direct**: ``accounts.limits.admit`` and ``accounts.settlement.settle_batch`` called
  on this thread, no accounting thread: with the statements on the driver's cursor
  (accounts.hotsql) and, for comparison, through Django's cursor and ``atomic()``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--holders", choices=["key", "team"], default="key",
                        help="team: the key's owner has limits of their own and the key belongs to a team with "
                             "a budget, so every request counts against three holders")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='llmserver-micro-')}/db.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts import hotsql
    from accounts.books import books
    from accounts.limits import admit
    from accounts.models import APIKey
    from accounts.records import Settlement, UsageRow
    from accounts.settlement import settle_batch

    sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL_MS / 1000)  # as the server has it (llmserver/asgi.py)
    call_command("migrate", verbosity=0)
    settings.MAX_CONCURRENT_REQUESTS = 10**9
    key, _ = APIKey.issue(name="accounting-micro")
    if args.holders == "team":
        from django.contrib.auth import get_user_model

        from accounts.models import Team, TeamMembership, UserLimits

        name = f"accounting-micro-{key.prefix}"  # new each run: a database of DATABASE_URL keeps the last's
        owner = get_user_model().objects.create_user(name)
        UserLimits.objects.create(user=owner, token_budget=10**15)
        team = Team.objects.create(name=name, token_budget=10**15, requests_per_minute=10**9)
        TeamMembership.objects.create(team=team, user=owner)
        key.owner, key.team = owner, team
        key.save()
    names = ("llmserver-demo",)

    def record(i: int) -> UsageRow:
        return UsageRow(api_key_id=key.pk, key_prefix=key.prefix, model="llmserver-demo",
                        endpoint="chat.completions", request_id=f"micro-{i}", streamed=True, prompt_tokens=20,
                        completion_tokens=40, cached_tokens=0, finish_reason="stop", status_code=200,
                        error_code="", started_at=timezone.now(), duration_ms=10.0, time_to_first_token_ms=1.0,
                        client_disconnected=False, user="", cost=None)

    def settlements(leases: list[int]) -> list:
        return [Settlement(lease, key, record(i), 60, timezone.now()) for i, lease in enumerate(leases)]

    def per_request(seconds: list[float]) -> float:
        return min(seconds) * 1000 / args.requests

    # --- books, on an event loop --------------------------------------------------------
    waits: list[float] = []  # wall seconds from books.admit to its answer, one at a time

    async def through_books(group: int) -> None:
        for first in range(0, args.requests, group):
            rids = [f"micro-{i}" for i in range(first, min(first + group, args.requests))]
            started = time.perf_counter()
            leases = await asyncio.gather(*(books.admit(key, rid, names) for rid in rids))
            if group == 1:
                waits.append(time.perf_counter() - started)
            for i, lease in enumerate(leases):
                books.settle_later(lease, key, record(first + i), 60)
        await asyncio.to_thread(books.flush)

    def accounting_cpu() -> float:
        """CPU seconds of this thread (the event loop's) and the accounting thread."""
        return time.thread_time() + time.clock_gettime(time.pthread_getcpuclockid(books._thread.ident))

    def measure_books(group: int, busy: bool) -> float:
        """``busy``: with a thread running Python all along, as the engine's and the
        streaming do, so that every time the database driver lets the GIL go, winning it
        back costs a switch (only the event loop's and the accounting thread's CPU
        count then)."""
        stop = threading.Event()
        spinner = threading.Thread(target=_spin, args=(stop,), daemon=True)
        if busy:
            spinner.start()
        cpu = []
        try:
            for _ in range(args.repeat):
                started = accounting_cpu() if busy else time.process_time()
                asyncio.run(through_books(group))
                cpu.append((accounting_cpu() if busy else time.process_time()) - started)
        finally:
            stop.set()
        return per_request(cpu)

    # --- direct, on this thread -------------------------------------------------------
    @contextmanager
    def django_transaction():
        with transaction.atomic(), connection.cursor() as cursor:
            yield cursor

    @contextmanager
    def django_autocommit():
        with connection.cursor() as cursor:
            yield cursor

    def admissions() -> list[int]:
        return [admit(key, f"micro-{i}", names) for i in range(args.requests)]

    def measure_direct() -> tuple[float, dict[int, float]]:
        """admitting, and settling in batches of each size (the leases taken are given
        back every run, so the lease table stays small)."""
        admitted, settled = [], {size: [] for size in (1, 16, 64)}
        for _ in range(args.repeat):
            started = time.process_time()
            leases = admissions()
            admitted.append(time.process_time() - started)
            settle_batch(settlements(leases))
            for size in settled:
                finished = settlements(admissions())
                started = time.process_time()
                for first in range(0, len(finished), size):
                    settle_batch(finished[first:first + size])
                settled[size].append(time.process_time() - started)
        return per_request(admitted), {size: per_request(t) for size, t in settled.items()}

    print(f"{connection.vendor}, {args.requests} requests, best of {args.repeat}; CPU ms per request")
    asyncio.run(through_books(1))  # warm: the accounting thread, its connection, the global row
    for busy in (False, True):
        for group in (1, 8):
            waits.clear()
            cpu = measure_books(group, busy)
            wait = f"  (admission's wall time, median: {statistics.median(waits) * 1000:.3f})" if waits else ""
            print(f"books, on an event loop{', busy' if busy else ''}, {group} at a time: admit + settle {cpu:.3f}{wait}")

    ways = {"driver cursor (accounts.hotsql)": None,
            "Django cursor + atomic()": (django_transaction, django_autocommit, lambda statement: statement)}
    originals = (hotsql.transaction, hotsql.autocommit, hotsql._driver_style)
    for name, patch in ways.items():
        if patch is not None:
            hotsql.transaction, hotsql.autocommit, hotsql._driver_style = patch
        try:
            admitted, settled = measure_direct()
        finally:
            hotsql.transaction, hotsql.autocommit, hotsql._driver_style = originals
        batches = "  ".join(f"batch {size}: {ms:.3f}" for size, ms in settled.items())
        print(f"direct, {name:32s} admit {admitted:.3f}  settle {batches}")


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(200))


if __name__ == "__main__":
    main()
