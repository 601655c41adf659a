"""What one request's admission and settlement cost on the accounting thread, alone:
``python -m bench.accounting_micro`` (SQLite in a temporary folder; or the database of
``DATABASE_URL``, whose llmserver tables it writes to: use a scratch one).

Measures, per request, the minimum over ``--repeat`` runs of ``--requests`` requests:
- ``admit()``, with the statements on the driver's cursor (accounts.hotsql) and, for
  comparison, the same statements through Django's cursor and ``atomic()``;
- settling finished requests in batches of 1, 4, 16 and 64 (lease back, counters, usage
  record), the same two ways.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
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
    from accounts.books import Settlement, settle_batch
    from accounts.limits import admit
    from accounts.models import APIKey

    call_command("migrate", verbosity=0)
    settings.MAX_CONCURRENT_REQUESTS = 10**9
    key, _ = APIKey.issue(name="accounting-micro")

    @contextmanager
    def django_transaction():
        with transaction.atomic(), connection.cursor() as cursor:
            yield cursor

    @contextmanager
    def django_autocommit():
        with connection.cursor() as cursor:
            yield cursor

    def record(i: int) -> dict:
        return {"api_key_id": key.pk, "key_prefix": key.prefix, "model": "llmserver-demo", "endpoint": "chat.completions",
                "request_id": f"micro-{i}", "streamed": True, "prompt_tokens": 20, "completion_tokens": 40,
                "cached_tokens": 0, "finish_reason": "stop", "status_code": 200, "error_code": "",
                "started_at": timezone.now(), "duration_ms": 10.0, "time_to_first_token_ms": 1.0,
                "client_disconnected": False, "user": ""}

    def admissions() -> list[int]:
        return [admit(key, f"micro-{i}", ("llmserver-demo",)) for i in range(args.requests)]

    def settlements(leases: list[int]) -> list:
        return [Settlement(lease, key, record(i), 60, timezone.now()) for i, lease in enumerate(leases)]

    def measure() -> tuple[float, dict[int, float]]:
        """ms per request: admitting, and settling in batches of each size (the leases
        taken are given back every run, so the lease table stays small)."""
        admitted, settled = [], {size: [] for size in (1, 4, 16, 64)}
        for _ in range(args.repeat):
            started = time.perf_counter()
            leases = admissions()
            admitted.append(time.perf_counter() - started)
            settle_batch(settlements(leases))
            for size in settled:
                finished = settlements(admissions())
                started = time.perf_counter()
                for first in range(0, len(finished), size):
                    settle_batch(finished[first:first + size])
                settled[size].append(time.perf_counter() - started)
        per_request = 1000 / args.requests
        return min(admitted) * per_request, {size: min(t) * per_request for size, t in settled.items()}

    ways = {"driver cursor (accounts.hotsql)": None,
            "Django cursor + atomic()": (django_transaction, django_autocommit, lambda statement: statement)}
    originals = (hotsql.transaction, hotsql.autocommit, hotsql._driver_style)
    print(f"{connection.vendor}, {args.requests} requests, best of {args.repeat}; ms per request")
    for name, patch in ways.items():
        if patch is not None:
            hotsql.transaction, hotsql.autocommit, hotsql._driver_style = patch
        try:
            admitted, settled = measure()
        finally:
            hotsql.transaction, hotsql.autocommit, hotsql._driver_style = originals
        batches = "  ".join(f"batch {size}: {ms:.3f}" for size, ms in settled.items())
        print(f"{name:32s} admit {admitted:.3f}  settle {batches}")


if __name__ == "__main__":
    main()
