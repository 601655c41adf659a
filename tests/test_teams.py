"""Teams and a user's own limits: a request counts against its key, the key's owner (their
UserLimits) and the key's team, and the tightest limit refuses it, with a code naming
whose limit it was. (Across two processes: tests/test_two_processes.py.)

In-process (tests/asgi.py) on the demo model at 5 ms a step; the time is set with
llmserver.clock, never slept to."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from accounts import limits
from accounts.limits import admit_many
from accounts.models import Lease, ModelPrice, Team, TeamMembership, UsageCounter, UsageRecord, UserLimits
from accounts.records import Admission
from llmserver import clock
from tests.conftest import MODEL_ID, issue_key, make_user, orm
from tests.test_limits import Stream, a_minute_ahead, answered, post, settled, too_many


def a_team(*members, lead=None, **limits) -> Team:
    team = Team.objects.create(name=f"team-{uuid.uuid4().hex[:6]}", **limits)
    for user in members:
        TeamMembership.objects.create(team=team, user=user, is_lead=user == lead)
    return team


def period_counter(**holder) -> tuple[int, int, int]:
    counter = UsageCounter.objects.filter(kind="period", **holder).get()
    return counter.requests, counter.tokens, counter.cost_units


def a_day_ahead(days: int):
    """Noon of a day no other test has counted in."""
    return (clock.now() + timedelta(days=days)).replace(hour=12, minute=0, second=0, microsecond=0)


async def test_a_spent_team_budget_refuses_every_members_key_and_no_key_outside_the_team(slow_api):
    alice, bob = await orm(make_user, "alice"), await orm(make_user, "bob")
    team = await orm(a_team, alice, bob, token_budget=10, budget_period="day")
    alices, alice_secret = await orm(issue_key, name="alice-team", owner=alice, team=team)
    bobs, bob_secret = await orm(issue_key, name="bob-team", owner=bob, team=team)
    _, own_secret = await orm(issue_key, name="alice-own", owner=alice)
    message = f"Your team {team.name} has used its budget of 10 tokens per day."
    with clock.frozen(a_day_ahead(3)) as time:
        used = (await answered(slow_api, alice_secret))["usage"]["total_tokens"]
        assert used > 10
        # Bob's key is refused at once (this process's unsettled request counts)...
        retry_after = await too_many(await post(slow_api, bob_secret), "team_token_budget_exceeded", message)
        now = time.now()
        assert retry_after == ((now + timedelta(days=1)).replace(hour=0) - now).total_seconds()
        await settled()
        # ...and once settled, from the team's counter, as is Alice's own team key.
        assert await orm(period_counter, team=team) == (0, used, 0)
        await too_many(await post(slow_api, bob_secret), "team_token_budget_exceeded", message)
        await too_many(await post(slow_api, alice_secret), "team_token_budget_exceeded", message)
        # Alice's key outside the team still answers; its tokens are not the team's.
        second = (await answered(slow_api, own_secret))["usage"]["total_tokens"]
        await settled()
        assert await orm(period_counter, team=team) == (0, used, 0)
        time.set(time.now().replace(hour=0) + timedelta(days=1))  # the team's next day
        await answered(slow_api, bob_secret)
    refused = await orm(lambda: list(UsageRecord.objects.filter(api_key__in=[alices, bobs], status_code=429)
                                      .values_list("error_code", flat=True)))
    assert refused == ["team_token_budget_exceeded"] * 3
    assert second > 0


async def test_a_users_concurrency_counts_across_all_their_keys(slow_api):
    carol = await orm(make_user, "carol")
    await orm(UserLimits.objects.create, user=carol, max_concurrency=1)
    _, first = await orm(issue_key, name="carol-1", owner=carol)
    _, second = await orm(issue_key, name="carol-2", owner=carol)
    _, someone_elses = await orm(issue_key, name="not-carol", owner=await orm(make_user, "dave"))
    held = await Stream.open(slow_api, first)
    await too_many(await post(slow_api, second), "user_concurrency_limit",
                   "Your account already has 1 requests in flight, its limit.")
    await answered(slow_api, someone_elses)
    await held.leave()
    await settled()
    await answered(slow_api, second)


async def test_the_tightest_of_key_owner_and_team_per_minute_limits_refuses_and_names_itself(slow_api):
    erin, frank = await orm(make_user, "erin"), await orm(make_user, "frank")
    await orm(UserLimits.objects.create, user=erin, requests_per_minute=2)
    team = await orm(a_team, erin, frank, requests_per_minute=3)
    _, erin_key = await orm(issue_key, name="erin", owner=erin, team=team, requests_per_minute=5)
    _, erin_tight = await orm(issue_key, name="erin-tight", owner=erin, team=team, requests_per_minute=1)
    _, frank_key = await orm(issue_key, name="frank", owner=frank, team=team)
    with clock.frozen(a_minute_ahead(5)):
        await answered(slow_api, erin_tight)
        # The key's own limit of 1 is the tightest here.
        await too_many(await post(slow_api, erin_tight), "requests_per_minute_limit",
                       "This API key has reached its limit of 1 requests per minute.")
        await answered(slow_api, erin_key)
        # Erin has made 2 requests this minute: her own limit refuses her other key.
        await too_many(await post(slow_api, erin_key), "user_requests_per_minute_limit",
                       "Your account has reached its limit of 2 requests per minute.")
        # Frank's first is the team's third; his second passes no limit of his own.
        await answered(slow_api, frank_key)
        await too_many(await post(slow_api, frank_key), "team_requests_per_minute_limit",
                       f"Your team {team.name} has reached its limit of 3 requests per minute.")
        minute = await orm(lambda: {(c.api_key_id is not None, c.user_id, c.team_id): c.requests
                                    for c in UsageCounter.objects.filter(kind="minute", team=team)})
        assert minute == {(False, None, team.pk): 3}
        assert await orm(lambda: UsageCounter.objects.get(kind="minute", user=erin).requests) == 2
    await settled()


async def test_a_team_cost_budget_counts_every_members_cost(slow_api, live_db):
    gina = await orm(make_user, "gina")
    team = await orm(a_team, gina, cost_budget=Decimal("0.000001"), budget_period="week")
    _, secret = await orm(issue_key, name="gina", owner=gina, team=team)
    await orm(ModelPrice.objects.update_or_create, model=MODEL_ID, defaults={
        "prompt_per_million": Decimal("1"), "completion_per_million": Decimal("2")})
    try:
        with clock.frozen(a_day_ahead(20)):
            usage = (await answered(slow_api, secret))["usage"]
            await settled()
            cost = Decimal(usage["prompt_tokens"] + 2 * usage["completion_tokens"]).scaleb(-6)
            assert await orm(period_counter, team=team) == (0, usage["total_tokens"], int(cost.scaleb(10)))
            await too_many(await post(slow_api, secret), "team_cost_budget_exceeded",
                           f"Your team {team.name} has used its budget of 0.000001 USD per week.")
    finally:
        await orm(ModelPrice.objects.filter(model=MODEL_ID).delete)


async def test_a_users_budget_is_kept_on_their_own_counter_from_all_their_keys(slow_api):
    hana = await orm(make_user, "hana")
    await orm(UserLimits.objects.create, user=hana, token_budget=1_000_000, budget_period="month")
    _, one = await orm(issue_key, name="hana-1", owner=hana)
    _, two = await orm(issue_key, name="hana-2", owner=hana)
    with clock.frozen(a_day_ahead(70)):
        first = (await answered(slow_api, one))["usage"]["total_tokens"]
        second = (await answered(slow_api, two))["usage"]["total_tokens"]
        await settled()
        assert await orm(period_counter, user=hana) == (0, first + second, 0)


def test_members_admitted_together_are_each_decided_as_if_alone(live_db):
    """One admission transaction (admit_many) for several members of a team: the team's
    requests this minute count each one before the next."""
    ivan, judy = make_user("ivan"), make_user("judy")
    team = a_team(ivan, judy, requests_per_minute=2, max_concurrency=3)
    ivans, _ = issue_key(name="ivan", owner=ivan, team=team)
    judys, _ = issue_key(name="judy", owner=judy, team=team)
    with clock.frozen(a_minute_ahead(10)):
        results = admit_many([Admission(ivans, "tm-1"), Admission(judys, "tm-2"), Admission(ivans, "tm-3")])
        try:
            refusals = {i: r.code for i, r in enumerate(results) if isinstance(r, Exception)}
            assert refusals == {2: "team_requests_per_minute_limit"}
            leases = Lease.objects.filter(pk__in=[r for r in results if isinstance(r, int)])
            assert sorted(leases.values_list("request_id", "user_id", "team_id")) == [
                ("tm-1", ivan.pk, team.pk), ("tm-2", judy.pk, team.pk)]
            assert UsageCounter.objects.get(team=team, kind="minute").requests == 2
            assert not UsageCounter.objects.filter(api_key__in=[ivans, judys]).exists()  # no limits of their own
        finally:
            Lease.objects.filter(request_id__in=["tm-1", "tm-2"]).delete()
            limits._held.difference_update(r for r in results if isinstance(r, int))


@pytest.mark.parametrize("holder", ["user", "team"])
async def test_a_concurrency_limit_of_a_user_or_team_frees_its_place_when_a_stream_leaves(slow_api, holder):
    kim = await orm(make_user, "kim")
    team = await orm(a_team, kim, max_concurrency=1 if holder == "team" else None)
    if holder == "user":
        await orm(UserLimits.objects.create, user=kim, max_concurrency=1)
    _, secret = await orm(issue_key, name=f"kim-{holder}", owner=kim, team=team)
    held = await Stream.open(slow_api, secret)
    code, who = ("user_concurrency_limit", "Your account") if holder == "user" else (
        "team_concurrency_limit", f"Your team {team.name}")
    await too_many(await post(slow_api, secret), code, f"{who} already has 1 requests in flight, its limit.")
    await held.leave()
    await settled()
    await answered(slow_api, secret)
