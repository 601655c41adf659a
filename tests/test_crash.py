"""`kill -9` of a server with streams in flight: what it held is freed within the lease
TTL, nothing it had written is lost or damaged, and the process serving after it (as a
restarted one would) serves.

What a crash does lose, by design: the usage records of the requests it had in flight
(they never finished) and of those finished in its last USAGE_WRITE_DELAY_MS, not yet
written (a SIGTERM writes them)."""

import signal
import time
import uuid

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import APIKey, Lease, UsageRecord
from tests.conftest import MODEL_ID, HeldStream, bearer, issue_key, server_record_for, start_server, wait_for

pytestmark = pytest.mark.server_process

TTL = 6
HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}


def test_a_killed_process_leases_expire_within_the_ttl_and_the_next_process_serves(tmp_path, live_db):
    key, secret = issue_key(name="crash", max_concurrency=3)
    crashing = start_server(tmp_path, ENGINE_STEP_DELAY_MS=5, LEASE_TTL_SECONDS=TTL)
    done_id = f"crash-before-{uuid.uuid4().hex}"
    answered = httpx.post(f"{crashing.base_url}/v1/chat/completions", json=HELLO, timeout=60,
                          headers={**bearer(secret), "X-Request-ID": done_id})
    assert answered.status_code == 200
    before = server_record_for(done_id)  # written before the crash
    # The process that takes over is ready before the leases are taken: its start-up,
    # slow on a busy machine, must not eat into the TTL the refusal below is checked within.
    survivor = start_server(tmp_path, LEASE_TTL_SECONDS=TTL)
    streams = [HeldStream(crashing.base_url, secret) for _ in range(3)]
    assert Lease.objects.filter(api_key=key).count() == 3
    crashing.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    crashing.process.wait()
    last_expiry = max(Lease.objects.filter(api_key=key).values_list("expires_at", flat=True))
    for stream in streams:
        stream.client.close()
    try:
        refused = httpx.post(f"{survivor.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
        assert refused.status_code == 429  # the dead process's leases still count...
        assert refused.json()["error"]["code"] == "key_concurrency_limit"
        admitted = wait_for(lambda: (r := httpx.post(f"{survivor.base_url}/v1/chat/completions", json=HELLO,
                                                     headers=bearer(secret))).status_code == 200 and r, timeout=TTL + 5)
        assert time.monotonic() - killed_at <= TTL + 1  # ...for at most LEASE_TTL_SECONDS
        assert admitted.json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"
        # All three places are free again, in this process, at once, once the last of the
        # dead leases (taken a moment after the first) has expired too.
        wait_for(lambda: timezone.now() > last_expiry, timeout=5)
        three = [HeldStream(survivor.base_url, secret) for _ in range(3)]
        for stream in three:
            stream.leave()
    finally:
        survivor.stop()

    # Nothing written before the crash was lost or changed, and the database is sound.
    assert _columns(UsageRecord.objects.get(request_id=done_id)) == _columns(before)
    assert APIKey.objects.get(pk=key.pk).hashed_secret == key.hashed_secret
    if connection.vendor == "sqlite":  # the file the killed process was writing to
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA integrity_check")
            assert cursor.fetchall() == [("ok",)]


def _columns(record) -> dict:
    return {field.attname: getattr(record, field.attname) for field in record._meta.concrete_fields}
