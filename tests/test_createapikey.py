"""``manage.py createapikey``: the secret is the last line of stdout, only its hash is
stored, and the options land in the key's fields."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import APIKey, hash_secret
from llmserver import clock

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"^sk-[A-Za-z0-9_-]{32,}$")


def create_key(*args: str) -> tuple[list[str], APIKey]:
    """Run the command; return its stdout lines and the key it created."""
    stdout = io.StringIO()
    call_command("createapikey", *args, stdout=stdout)
    lines = stdout.getvalue().splitlines()
    return lines, APIKey.objects.get(hashed_secret=hash_secret(lines[-1]))


def test_it_prints_the_key_as_the_last_line(db):
    lines, key = create_key("--name", "ci")

    assert KEY.match(lines[-1])
    assert lines[-1].startswith(key.prefix)
    assert lines == [f"Created key 'ci' ({key.prefix}...); the secret is shown only once:", lines[-1]]


def test_it_stores_only_the_hash_of_the_secret(db):
    lines, key = create_key("--name", "ci")
    secret = lines[-1]

    assert key.hashed_secret == hash_secret(secret)
    assert len(key.prefix) == 12
    row = APIKey.objects.filter(pk=key.pk).values().get()
    assert not [field for field, value in row.items() if secret in str(value)]


def test_each_run_makes_a_new_secret(db):
    first, _ = create_key("--name", "a")
    second, _ = create_key("--name", "a")

    assert first[-1] != second[-1]
    assert APIKey.objects.filter(name="a").count() == 2


def test_the_options_land_in_the_fields(empty_database, django_user_model):
    owner = django_user_model.objects.create_user("alice")

    with clock.frozen() as frozen:
        moment = frozen.now()
        _, key = create_key(
            "--name", "batch jobs", "--user", "alice", "--max-concurrency", "3", "--models", "llmserver-demo, other,",
            "--expires-in-days", "30", "--requests-per-minute", "60", "--tokens-per-minute", "5000",
            "--token-budget", "1000000", "--cost-budget", "12.5", "--budget-period", "week",
        )

    assert key.name == "batch jobs"
    assert key.owner == owner
    assert key.is_active is True
    assert key.max_concurrency == 3
    assert key.allowed_models == ["llmserver-demo", "other"]
    assert key.expires_at == moment + timedelta(days=30)
    assert key.requests_per_minute == 60
    assert key.tokens_per_minute == 5000
    assert key.token_budget == 1000000
    assert key.cost_budget == Decimal("12.5")
    assert key.budget_period == "week"


def test_without_options_the_key_is_unlimited_and_never_expires(db):
    _, key = create_key("--name", "plain")

    assert key.owner is None
    assert key.max_concurrency is None
    assert key.allowed_models == []
    assert key.expires_at is None
    assert key.requests_per_minute is None
    assert key.tokens_per_minute is None
    assert key.token_budget is None
    assert key.cost_budget is None
    assert key.budget_period == "month"
    assert (key.is_admin, key.kind) == (False, "api")


def test_admin_makes_a_key_that_may_manage_models(db):
    _, key = create_key("--name", "ops", "--admin")
    assert key.is_admin is True


def test_an_unknown_user_is_a_clear_error(empty_database):
    with pytest.raises(CommandError, match="^No user named 'nobody'"):
        call_command("createapikey", "--name", "x", "--user", "nobody", stdout=io.StringIO())

    assert APIKey.objects.count() == 0


@pytest.mark.parametrize("args", [
    ["--max-concurrency", "0"],
    ["--expires-in-days", "-1"],
    ["--budget-period", "year"],
    ["--cost-budget", "-1"],
    ["--cost-budget", "0.0000001"],
    ["--cost-budget", "NaN"],
])
def test_invalid_options_are_refused(empty_database, args):
    with pytest.raises(CommandError):
        call_command("createapikey", "--name", "x", *args, stdout=io.StringIO())

    assert APIKey.objects.count() == 0


def test_a_blank_name_is_refused(db):
    with pytest.raises(CommandError, match="--name must not be empty"):
        call_command("createapikey", "--name", "  ", stdout=io.StringIO())


def test_it_works_as_a_real_process(tmp_path):
    """What scripts do: KEY=$(python manage.py createapikey ... | tail -n 1)."""
    database = tmp_path / "db.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}"}

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--verbosity", "0")
    before = timezone.now()
    stdout = manage("createapikey", "--name", "from a script", "--max-concurrency", "2",
                    "--models", "llmserver-demo", "--expires-in-days", "7")
    secret = stdout.splitlines()[-1]

    assert stdout.endswith(secret + "\n")
    assert KEY.match(secret)
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM accounts_apikey").fetchall()
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["hashed_secret"] == hash_secret(secret)
    assert row["prefix"] == secret[:12]
    assert not [column for column, value in row.items() if secret in str(value)]
    assert row["name"] == "from a script"
    assert row["max_concurrency"] == 2
    assert row["allowed_models"] == '["llmserver-demo"]'
    expires_at = APIKey._meta.get_field("expires_at").to_python(row["expires_at"])
    assert before + timedelta(days=7) <= expires_at.replace(tzinfo=dt_timezone.utc) <= timezone.now() + timedelta(days=7)


def test_a_team_key_takes_the_teams_defaults_where_no_option_gives_a_limit(db, django_user_model):
    from accounts.models import KeyAllowance, Team, TeamMembership

    alice = django_user_model.objects.create_user("alice")
    team = Team.objects.create(name="Research")
    TeamMembership.objects.create(team=team, user=alice)
    KeyAllowance.objects.create(team=team, max_concurrency=2, token_budget=5000, budget_period="week")
    _, key = create_key("--name", "team", "--user", "alice", "--team", "Research", "--max-concurrency", "7")
    assert (key.owner, key.team, key.max_concurrency, key.token_budget, key.budget_period, key.requests_per_minute) == (
        alice, team, 7, 5000, "week", None)
    _, own_period = create_key("--name", "team-day", "--team", "Research", "--budget-period", "day")
    assert (own_period.token_budget, own_period.budget_period) == (5000, "day")


def test_a_team_must_exist_and_have_the_owner_as_a_member(db, django_user_model):
    from accounts.models import Team

    django_user_model.objects.create_user("bob")
    Team.objects.create(name="Research")
    with pytest.raises(CommandError, match="No team named 'Nope'. Create it first"):
        create_key("--name", "x", "--team", "Nope")
    with pytest.raises(CommandError, match="'bob' is not a member of the team 'Research'."):
        create_key("--name", "x", "--user", "bob", "--team", "Research")
    assert not APIKey.objects.filter(name="x").exists()
