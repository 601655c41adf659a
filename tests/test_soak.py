"""The soak of `make soak`, shortened: the same clients, mix and checks for 20 seconds
instead of 120 (drills/soak.py)."""

import pytest

from drills.soak import run_soak, summary
from tests.conftest import start_server

pytestmark = [pytest.mark.long, pytest.mark.server_process]


def test_sixty_four_clients_for_twenty_seconds_lose_no_record_and_leak_nothing(tmp_path, live_db, demo_tokenizer):
    server = start_server(tmp_path)
    try:
        soak, checks = run_soak(server.base_url, seconds=20, clients=64, seed=7, server_pid=server.process.pid,
                                tokenizer=demo_tokenizer)
    finally:
        server.stop()
    report = summary(soak, checks)
    print(report)
    assert [c.name for c in checks if not c.ok] == [], report
    # The mix happened: answers, streams left mid-way, and keys refused over their limits.
    statuses = {o.status for o in soak.outcomes}
    assert statuses == {200, 429}, report
    assert sum(o.left_early for o in soak.outcomes) >= 10, report
    refusals = {o.code for o in soak.outcomes if o.status == 429}
    assert refusals == {"key_concurrency_limit", "requests_per_minute_limit", "token_budget_exceeded"}, report
    assert "Traceback" not in server.log()
