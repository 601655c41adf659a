"""Admission on the event loop (accounts/inline.py, SQLite): a lease taken at once when
the write lock is free, the accounting thread deciding whenever the lock is taken, the key
has token limits, or a limit would refuse; the loop never waits. In this process, on the
suite's database; servers exercise the same path in every other test on SQLite."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from xml.etree import ElementTree
from datetime import datetime, timezone as dt_timezone

import pytest
from django.conf import settings
from django.db import connection

from accounts.books import books
from accounts.inline import inline
from accounts.models import Lease
from llmserver.errors import APIError
from tests.conftest import ROOT, issue_key

SQLITE = connection.vendor == "sqlite"


# The tests below, run in this process on SQLite, and in a child pytest on PostgreSQL.
ON_SQLITE = (
    "test_a_key_without_token_limits_is_admitted_on_the_loop_at_once",
    "test_a_key_with_a_token_budget_is_decided_on_the_accounting_thread",
    "test_with_the_write_lock_taken_the_loop_does_not_wait_and_the_thread_admits",
    "test_what_the_loop_would_refuse_is_refused_by_the_accounting_thread_with_the_same_error",
    "test_a_revoked_key_is_refused_even_though_this_process_knew_it",
)


if not SQLITE:
    # The suite runs on PostgreSQL (CI): this file's tests need the process's database to
    # be SQLite (accounts.inline decides when the process starts whether it is on), so
    # they run again in a child pytest on its own SQLite database, which reports each
    # test's outcome in a JUnit XML file.

    def test_postgresql_never_admits_on_the_loop():
        assert inline.enabled is False

    @pytest.fixture(scope="module")
    def child(tmp_path_factory) -> tuple[dict[str, str], str]:
        """Each test of the child pytest by name: "passed", "failed", "error" or
        "skipped"; and the end of its output, to show when one did not pass."""
        report = tmp_path_factory.mktemp("inline-admission") / "report.xml"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                               f"--junitxml={report}", __file__],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
        outcomes = {}
        for case in ElementTree.parse(report).iter("testcase"):
            problems = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = {"failure": "failed"}.get(problems[0], problems[0]) if problems else "passed"
        return outcomes, done.stdout[-3000:] + done.stderr[-3000:]

    def test_the_child_pytest_ran_each_sqlite_test_once(child):
        outcomes, output = child
        assert sorted(outcomes) == sorted(ON_SQLITE), output

    @pytest.mark.parametrize("name", ON_SQLITE)
    def test_on_sqlite_in_a_child_pytest(child, name):
        outcomes, output = child
        assert outcomes.get(name) == "passed", output


else:
    def admit_now(key, request_id: str):
        """books.admit from an event loop: (whether its answer was there at once, the lease id
        or the refusal)."""

        async def scenario():
            await books.call(lambda: None)  # the accounting thread has admitted once (global row)
            future = books.admit(key, request_id)
            at_once = future.done()
            try:
                return at_once, await future
            except APIError as refusal:
                return at_once, refusal

        return asyncio.run(scenario())


    def lease(request_id: str) -> Lease:
        return Lease.objects.get(request_id=request_id)


    @pytest.fixture(autouse=True)
    def _known_global_row(live_db):
        """admit_inline needs the accounting thread's first admission (it makes the
        deployment's row); any key's does."""
        key, _ = issue_key(name="inline-warm-up", token_budget=10**9)
        asyncio.run(_thread_admission(key))
        Lease.objects.filter(request_id="inline-warm-up").delete()


    async def _thread_admission(key):
        return await books.admit(key, "inline-warm-up")


    def test_a_key_without_token_limits_is_admitted_on_the_loop_at_once(live_db):
        key, _ = issue_key(name="inline-plain", max_concurrency=2)
        at_once, lease_id = admit_now(key, "inline-plain-1")
        assert at_once is True
        assert lease("inline-plain-1").pk == lease_id
        assert lease("inline-plain-1").api_key_id == key.pk
        assert lease("inline-plain-1").expires_at > datetime.now(dt_timezone.utc)
        Lease.objects.filter(pk=lease_id).delete()


    def test_a_key_with_a_token_budget_is_decided_on_the_accounting_thread(live_db):
        """Its finished requests' tokens may still be waiting to be settled, and only the
        accounting thread knows them."""
        key, _ = issue_key(name="inline-budget", token_budget=100)
        at_once, lease_id = admit_now(key, "inline-budget-1")
        assert at_once is False
        assert lease("inline-budget-1").pk == lease_id
        Lease.objects.filter(pk=lease_id).delete()


    def test_with_the_write_lock_taken_the_loop_does_not_wait_and_the_thread_admits(live_db):
        key, _ = issue_key(name="inline-locked")
        holder = sqlite3.connect(settings.DATABASES["default"]["NAME"], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock

        async def scenario():
            await books.call(lambda: None)
            started = asyncio.get_running_loop().time()
            future = books.admit(key, "inline-locked-1")
            returned = asyncio.get_running_loop().time() - started
            at_once = future.done()
            await asyncio.sleep(0.3)
            still_waiting = not future.done()  # the accounting thread waits for the lock
            holder.execute("ROLLBACK")
            return returned, at_once, still_waiting, await future

        try:
            returned, at_once, still_waiting, lease_id = asyncio.run(scenario())
        finally:
            holder.close()
        assert returned < 0.05  # the busy lock answered at once, no busy timeout on the loop
        assert (at_once, still_waiting) == (False, True)
        assert lease("inline-locked-1").pk == lease_id
        assert inline.enabled  # a busy lock is no reason to turn the path off
        Lease.objects.filter(pk=lease_id).delete()


    def test_what_the_loop_would_refuse_is_refused_by_the_accounting_thread_with_the_same_error(live_db):
        """At its limit the key's next request goes to the thread, which knows the finished
        requests not yet settled, and refuses it there (nothing written by the loop)."""
        key, _ = issue_key(name="inline-full", max_concurrency=1)
        first_at_once, first = admit_now(key, "inline-full-1")
        at_once, refusal = admit_now(key, "inline-full-2")
        assert first_at_once is True
        assert at_once is False
        assert isinstance(refusal, APIError)
        assert (refusal.status, refusal.code) == (429, "key_concurrency_limit")
        assert list(Lease.objects.filter(api_key=key).values_list("request_id", flat=True)) == ["inline-full-1"]
        Lease.objects.filter(pk=first).delete()


    def test_a_revoked_key_is_refused_even_though_this_process_knew_it(live_db):
        from accounts.models import APIKey

        key, _ = issue_key(name="inline-revoked")
        APIKey.objects.filter(pk=key.pk).update(is_active=False)
        at_once, refusal = admit_now(key, "inline-revoked-1")
        assert at_once is False  # refused on the thread, with the same answer as ever
        assert (refusal.status, refusal.code) == (401, "invalid_api_key")
        assert not Lease.objects.filter(request_id="inline-revoked-1").exists()
