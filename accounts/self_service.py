"""API keys people make for themselves (the chat app's API keys page, chat/keys.py).

A user makes keys within the allowance an admin gave them (accounts.models.KeyAllowance):
at most ``max_keys`` active at once, each with the allowance's limits, for the models the
user's chat key may use. Nothing a user sends sets a limit. Each creation and revocation
is in the admin's history (LogEntry), as if made there, by the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import APIKey, KeyAllowance, KeyKind, Team, TeamMembership, UsageCounter, UsageRecord, period_start
from llmserver import clock


class KeyRefused(Exception):
    """What the user asked for is not within their allowance; the message says why."""


def amount_text(amount: Decimal | None) -> str:
    """An amount as the page shows it: to six decimal places, without trailing zeros
    ("0.01234"); "–" for none."""
    return "–" if amount is None else f"{amount.quantize(Decimal('1e-6')).normalize():f}"


class _CostText:
    """A row's cost (its field named by ``_cost_field``) as the page shows it."""

    _cost_field = "cost"

    @property
    def cost_text(self) -> str:
        return amount_text(getattr(self, self._cost_field))


@dataclass
class OwnKey(_CostText):
    """One of the user's keys as the page lists it."""

    key: APIKey
    requests: int
    tokens_this_period: int
    cost_this_period: Decimal | None
    _cost_field = "cost_this_period"


def own_keys(user) -> list[OwnKey]:
    """The user's API keys (not their chat key), newest first, with their usage: requests
    in all, tokens and cost in the current budget period."""
    now = clock.now()
    keys = list(APIKey.objects.filter(owner=user, kind=KeyKind.API).select_related("team").annotate(requests=Count("usage"))
                .order_by("-created_at"))
    counters = UsageCounter.current_periods(keys, now)
    listed = []
    for key in keys:
        counter = counters.get(key.pk)
        listed.append(OwnKey(key, key.requests, counter.tokens if counter else 0,
                             counter.cost if counter and counter.cost_units else None))
    return listed


# The days of usage a user's own page shows.
USAGE_DAYS = 14


@dataclass
class UsageDay(_CostText):
    day: object  # a date
    requests: int
    tokens: int
    cost: Decimal | None


def usage_by_day(user=None, *, team: Team | None = None) -> list[UsageDay]:
    """What every key of ``user``'s (their API keys and their chat key), or of ``team``,
    used on each of the last USAGE_DAYS days that saw any, newest first."""
    since = timezone.localdate() - timedelta(days=USAGE_DAYS - 1)
    start = timezone.make_aware(datetime.combine(since, time.min))
    whose = Q(api_key__team=team) if team is not None else Q(api_key__owner=user)
    rows = (UsageRecord.objects.filter(whose, started_at__gte=start)
            .annotate(day=TruncDate("started_at")).values("day")
            .annotate(requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                      cost=Sum("cost"))
            .order_by("-day"))
    return [UsageDay(row["day"], row["requests"], (row["prompt"] or 0) + (row["completion"] or 0),
                     None if row["cost"] is None else Decimal(row["cost"])) for row in rows]


@dataclass
class MemberUsage(_CostText):
    """A member's use of the team's keys this budget period (a team lead's view)."""

    username: str
    requests: int
    tokens: int
    cost: Decimal | None


@dataclass
class OwnTeam(_CostText):
    """One of the user's teams as their page shows it: the team's use of its budget this
    period, the allowance a key made for it takes (the team's, when the user has none of
    their own), and for a lead, each member's use and the team's days."""

    team: Team
    is_lead: bool
    tokens_this_period: int
    cost_this_period: Decimal
    members: list[MemberUsage]
    days: list[UsageDay]
    allowance: KeyAllowance | None = None
    _cost_field = "cost_this_period"

    @property
    def token_share(self) -> float | None:
        """The share of the token budget used (None without one)."""
        budget = self.team.token_budget
        return None if not budget else min(self.tokens_this_period / budget, 1.0)

    @property
    def cost_share(self) -> float | None:
        budget = self.team.cost_budget
        return None if not budget else min(float(self.cost_this_period / budget), 1.0)


def own_teams(user) -> list[OwnTeam]:
    """The teams ``user`` belongs to, by name."""
    now = clock.now()
    memberships = list(TeamMembership.objects.filter(user=user).select_related("team").order_by("team__name"))
    counters = UsageCounter.current_periods([m.team for m in memberships], now, holder="team")
    listed = []
    for membership in memberships:
        team = membership.team
        counter = counters.get(team.pk)
        members, days = [], []
        if membership.is_lead:
            since = period_start(team.budget_period, now)
            rows = (UsageRecord.objects.filter(api_key__team=team, started_at__gte=since)
                    .values("api_key__owner__username")
                    .annotate(requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                              cost=Sum("cost"))
                    .order_by("api_key__owner__username"))
            members = [MemberUsage(row["api_key__owner__username"] or "(no owner)", row["requests"],
                                   (row["prompt"] or 0) + (row["completion"] or 0),
                                   None if row["cost"] is None else Decimal(row["cost"])) for row in rows]
            days = usage_by_day(team=team)
        allowance = KeyAllowance.of(user, team)  # shown where it is the team's (the user has none of their own)
        listed.append(OwnTeam(team, membership.is_lead, counter.tokens if counter else 0,
                              counter.cost if counter else Decimal(0), members, days,
                              allowance if allowance.team_id == team.pk else None))
    return listed


def usable_models(user, catalogue: list) -> list[str]:
    """The catalogue's model ids (``catalogue``: inference.registry.ModelSpec) the user's
    chat key may use: what a key they make may be scoped to."""
    chat_key = APIKey.objects.chat_key_for(user)
    return [spec.id for spec in catalogue if chat_key.may_use(*spec.names)]


def create_key(user, *, name: str, expires_in_days: int | None, models: list[str], catalogue: list,
               team: Team | None = None) -> tuple[APIKey, str]:
    """Make a key for ``user`` (for ``team``, one of theirs) within their allowance (their
    own, else the team's); return it and its secret. ``models`` empty: every model the
    user may use now. Raises KeyRefused."""
    if team is not None and not team.members.filter(pk=user.pk).exists():
        raise KeyRefused(f"You are not a member of {team}.")
    allowance = KeyAllowance.of(user, team)
    usable = usable_models(user, catalogue)
    if not usable:
        raise KeyRefused("You may not use any model, so a key would be of no use.")
    not_usable = sorted(set(models) - set(usable))
    if not_usable:
        raise KeyRefused(f"You may not use {', '.join(not_usable)}.")
    if not models and len(usable) < len(catalogue):
        models = usable  # everything the user may use, not everything there is
    expires_at = clock.now() + timedelta(days=expires_in_days) if expires_in_days else None
    with transaction.atomic():
        # The user's row locked (PostgreSQL): two creations at once count each other.
        get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).first()
        held = APIKey.objects.filter(owner=user, kind=KeyKind.API, is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=clock.now())).count()
        if held >= allowance.max_keys:
            raise KeyRefused(f"You may hold {allowance.max_keys} active key{'' if allowance.max_keys == 1 else 's'} "
                             "at once; revoke one to make another." if allowance.max_keys else
                             "You may not make API keys; ask an administrator.")
        key, secret = APIKey.issue(name=name, owner=user, team=team, allowed_models=list(models), expires_at=expires_at,
                                   **allowance.key_limits())
        _history(user, key, ADDITION, "Created on the API keys page.")
    return key, secret


def revoke_key(user, key_id: int) -> APIKey:
    """Revoke one of ``user``'s own API keys (APIKey.DoesNotExist for any other key)."""
    key = APIKey.objects.get(pk=key_id, owner=user, kind=KeyKind.API)
    if key.is_active:
        key.revoke()
        _history(user, key, CHANGE, "Revoked on the API keys page.")
    return key


def _history(user, key: APIKey, action: int, message: str) -> None:
    LogEntry.objects.log_actions(user.pk, [key], action, change_message=message, single_object=True)
