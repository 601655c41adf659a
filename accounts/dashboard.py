"""The usage dashboard: what the admin shows at /admin/accounts/usagerecord/dashboard/.

The numbers come from UsageRecord rows (one per API request) grouped by day with the
ORM (TruncDate + Sum / Count), which works the same on SQLite and PostgreSQL. Days are
those of the current time zone (settings.TIME_ZONE, UTC for llmserver).
"""

from __future__ import annotations

import csv
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate, TruncHour
from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from accounts.charts import Series, colour_series, line_chart, stacked_bar_chart
from accounts.models import APIKey, Team, UsageCounter, UsageRecord

DEFAULT_DAYS = 14
MAX_DAYS = 366
QUICK_RANGES = [1, 2, 7, 14, 30, 90]
# More series than this in one chart is unreadable; the rest are summed as "Other".
MAX_SERIES = 8
TOP_KEYS = 10

TOKENS = F("prompt_tokens") + F("completion_tokens")
# Errors the client or the server can do something about; 429 (a limit doing its job)
# is counted on its own.
ERRORS = Q(status_code__gte=400) & ~Q(status_code=429)
RATE_LIMITED = Q(status_code=429)


# The filters the dashboard takes, each a UsageRecord lookup on the value given.
FILTERS = {"model": "model", "endpoint": "endpoint", "key": "key_prefix__startswith",
           "user": "api_key__owner__username", "team": "api_key__team__name"}
# Ranges of this many days or fewer are shown by the hour.
HOURLY_DAYS = 2


class RangeForm(forms.Form):
    """The days to show, both inclusive (empty: the last DEFAULT_DAYS days), and the
    filters: a model, an endpoint, a key (by its prefix), a key owner's username and a
    key's team."""

    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    model = forms.CharField(required=False, max_length=256)
    endpoint = forms.CharField(required=False, max_length=64)
    key = forms.CharField(required=False, max_length=12, label="Key prefix")
    user = forms.CharField(required=False, max_length=150)
    team = forms.CharField(required=False, max_length=100)

    def clean(self):
        data = super().clean()
        end = data.get("end") or timezone.localdate()
        start = data.get("start") or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError("The start must not be after the end.")
        if (end - start).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"Show at most {MAX_DAYS} days at once.")
        data["start"], data["end"] = start, end
        return data


def default_range() -> tuple[date, date]:
    end = timezone.localdate()
    return end - timedelta(days=DEFAULT_DAYS - 1), end


def quick_ranges(filters: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(days, query string) for the "last N days" links, keeping the filters."""
    end = timezone.localdate()
    chosen = {name: value for name, value in (filters or {}).items() if value}
    return [(days, urlencode({"start": (end - timedelta(days=days - 1)).isoformat(), "end": end.isoformat(), **chosen}))
            for days in QUICK_RANGES]


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The aware datetimes from the start of ``start`` to the end of ``end``."""
    tz = timezone.get_current_timezone()
    return (datetime.combine(start, time.min, tzinfo=tz),
            datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz))


def key_label(name: str | None, prefix: str) -> str:
    if name is not None:
        return f"{name} ({prefix}…)"
    # The key was deleted (the record keeps its prefix) or the request had none.
    return f"{prefix}… (deleted key)" if prefix else "(no key)"


def selected(start: date, end: date, filters: dict[str, str] | None) -> tuple:
    """(since, until, the filters given a value, the records they and the days select)."""
    since, until = day_bounds(start, end)
    chosen = {name: value for name, value in (filters or {}).items() if value}
    records = UsageRecord.objects.filter(started_at__gte=since, started_at__lt=until,
                                         **{FILTERS[name]: value for name, value in chosen.items()})
    return since, until, chosen, records


class Buckets:
    """The chart's time buckets for a range: days, or hours for a range of HOURLY_DAYS
    days or fewer."""

    def __init__(self, start: date, end: date):
        days = (end - start).days + 1
        since, _ = day_bounds(start, end)
        self.hourly = days <= HOURLY_DAYS
        if self.hourly:
            self.moments = [since + timedelta(hours=i) for i in range(24 * days)]
            self.labels = [f"{moment:%Y-%m-%d %H:00}" for moment in self.moments]
            self.trunc, self.name = TruncHour, "hour"
        else:
            self.moments = [start + timedelta(days=i) for i in range(days)]
            self.labels = [day.isoformat() for day in self.moments]
            self.trunc, self.name = TruncDate, "day"
        self.index = {moment: i for i, moment in enumerate(self.moments)}

    def __len__(self) -> int:
        return len(self.moments)

    def annotate(self, records):
        return records.annotate(bucket=self.trunc("started_at"))


def tokens_by_bucket(records, buckets: Buckets, fields: list[str], label_of, other_label: str) -> list[Series]:
    """Tokens per bucket for each group of ``fields`` that used any, biggest groups
    first, the smallest summed into one "Other" series so that a chart keeps at most
    MAX_SERIES + 1."""
    rows = buckets.annotate(records).values("bucket", *fields).annotate(tokens=Sum(TOKENS)).order_by()
    by_label: dict[str, list[int]] = {}
    for row in rows:
        values = by_label.setdefault(label_of(row), [0] * len(buckets))
        values[buckets.index[row["bucket"]]] += row["tokens"] or 0

    # A group that used no tokens (requests refused or failed before any) has no bar to
    # show and no place in the legend.
    ranked = sorted(((label, values) for label, values in by_label.items() if any(values)),
                    key=lambda item: (-sum(item[1]), item[0]))
    series = [Series(label, values) for label, values in ranked[:MAX_SERIES]]
    rest = ranked[MAX_SERIES:]
    if rest:
        series.append(Series(other_label, [sum(column) for column in zip(*(values for _, values in rest))]))
    return colour_series(series, other_label)


def errors_by_bucket(records, buckets: Buckets) -> list[Series]:
    rows = (buckets.annotate(records).values("bucket")
            .annotate(errors=Count("pk", filter=ERRORS), rate_limited=Count("pk", filter=RATE_LIMITED))
            .order_by())
    errors, rate_limited = [0] * len(buckets), [0] * len(buckets)
    for row in rows:
        errors[buckets.index[row["bucket"]]] = row["errors"]
        rate_limited[buckets.index[row["bucket"]]] = row["rate_limited"]
    return colour_series([
        Series("Errors (status ≥ 400, not 429)", errors, "#e15759"),
        Series("Rate limited (429)", rate_limited, "#f28e2b"),
    ])


def top_keys(records, since: datetime, until: datetime, filters: dict[str, str]) -> list[dict]:
    """The keys that used the most tokens, each with the query string of its records
    in the usage changelist (searched by prefix, the same days)."""
    rows = (records.values("api_key", "api_key__name", "key_prefix")
            .annotate(requests=Count("pk"), prompt=Sum("prompt_tokens"),
                      completion=Sum("completion_tokens"), tokens=Sum(TOKENS),
                      errors=Count("pk", filter=ERRORS), rate_limited=Count("pk", filter=RATE_LIMITED),
                      cost=Sum("cost"))
            .order_by("-tokens", "key_prefix")[:TOP_KEYS])
    return [{
        **row,
        "label": key_label(row["api_key__name"], row["key_prefix"]),
        # str() of an aware datetime is what the changelist's own date filter links use.
        "records_query": urlencode({
            "q": row["key_prefix"], "started_at__gte": str(since), "started_at__lt": str(until),
            # The filters the changelist has (list_filter), as its own links spell them.
            **{f"{name}__exact": filters[name] for name in ("model", "endpoint") if name in filters}}),
    } for row in rows]


def _top_by(records, field: str, since: datetime, until: datetime, filters: dict[str, str]) -> list[dict]:
    """The groups of ``field`` (a key owner's username, a team's name) whose keys used the
    most tokens, each with the query string of its records in the usage changelist (by
    that field, the same days)."""
    rows = (records.filter(**{f"{field}__isnull": False}).values(field)
            .annotate(keys=Count("api_key", distinct=True), requests=Count("pk"), tokens=Sum(TOKENS),
                      errors=Count("pk", filter=ERRORS), rate_limited=Count("pk", filter=RATE_LIMITED),
                      cost=Sum("cost"))
            .order_by("-tokens", field)[:TOP_KEYS])
    return [{
        **row,
        "name": row[field],
        "records_query": urlencode({
            field: row[field], "started_at__gte": str(since), "started_at__lt": str(until),
            **{f"{name}__exact": filters[name] for name in ("model", "endpoint") if name in filters}}),
    } for row in rows]


# The changelist lookups the top tables link with (UsageRecordAdmin.lookup_allowed).
TOP_LOOKUPS = ("api_key__owner__username", "api_key__team__name")


def top_users(records, since: datetime, until: datetime, filters: dict[str, str]) -> list[dict]:
    """The keys' owners whose keys used the most tokens."""
    return _top_by(records, "api_key__owner__username", since, until, filters)


def top_teams(records, since: datetime, until: datetime, filters: dict[str, str]) -> list[dict]:
    """The teams whose keys used the most tokens."""
    return _top_by(records, "api_key__team__name", since, until, filters)


def team_budgets(now: datetime) -> list[dict]:
    """Every team with a token or cost budget: what its keys used of it in the current
    period (for a bar), most used first."""
    teams = list(Team.objects.filter(Q(token_budget__isnull=False) | Q(cost_budget__isnull=False)))
    counters = UsageCounter.current_periods(teams, now, holder="team")
    return sorted((row for team in teams for row in _budget_rows(team, team.name, counters.get(team.pk),
                                                                 reverse("admin:accounts_team_change", args=[team.pk]))),
                  key=lambda row: (-row["share"], row["label"], row["kind"]))


def _budget_rows(holder, label: str, counter, url: str) -> list[dict]:
    """A key's or team's use of each of its budgets this period (``url``: its admin page)."""
    tokens, cost = (counter.tokens, counter.cost) if counter else (0, Decimal(0))
    rows = []
    for kind, used, budget in (("tokens", tokens, holder.token_budget), ("cost", cost, holder.cost_budget)):
        if budget is not None:
            share = 1.0 if budget == 0 else float(used / budget)
            rows.append({"holder": holder, "label": label, "url": url, "kind": kind,
                         "used": used if kind == "tokens" else used.normalize(), "budget": budget,
                         "share": share, "percent": round(100 * share), "period": holder.budget_period})
    return rows


# A key is near its budget once it has used this share of it in the current period.
NEAR_BUDGET = 0.8


def keys_near_budget(now: datetime) -> list[dict]:
    """Active keys that have used NEAR_BUDGET or more of a token or cost budget in their
    current period: each with what it used, its budget and the share (for a bar), most
    used first. Budgets are per key and period, whatever the range shown."""
    keys = list(APIKey.objects.filter(is_active=True).filter(
        Q(token_budget__isnull=False) | Q(cost_budget__isnull=False)))
    if not keys:
        return []
    counters = UsageCounter.current_periods(keys, now)
    near = [row for key in keys for row in _budget_rows(key, key_label(key.name, key.prefix), counters.get(key.pk),
                                                        reverse("admin:accounts_apikey_change", args=[key.pk]))
            if row["budget"] == 0 or row["share"] >= NEAR_BUDGET]
    return sorted(near, key=lambda row: (-row["share"], row["label"], row["kind"]))


def aggregates_csv(start: date, end: date, filters: dict[str, str]) -> HttpResponse:
    """The aggregates the dashboard charts, as CSV: per bucket (day, or hour for a short
    range), key (with its team) and model, the requests, tokens, errors, 429s and cost."""
    _, _, _, records = selected(start, end, filters)
    buckets = Buckets(start, end)
    rows = (buckets.annotate(records).values("bucket", "key_prefix", "api_key__name", "api_key__team__name", "model")
            .annotate(requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                      errors=Count("pk", filter=ERRORS), rate_limited=Count("pk", filter=RATE_LIMITED),
                      cost=Sum("cost"))
            .order_by("bucket", "key_prefix", "model"))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}.csv"'
    writer = csv.writer(response)
    writer.writerow([buckets.name, "key_prefix", "key_name", "team", "model", "requests", "prompt_tokens",
                     "completion_tokens", "total_tokens", "errors", "rate_limited", f"cost_{settings.COST_CURRENCY}"])
    for row in rows:
        label = buckets.labels[buckets.index[row["bucket"]]]
        prompt, completion = row["prompt"] or 0, row["completion"] or 0
        writer.writerow([label, row["key_prefix"], row["api_key__name"] or "", row["api_key__team__name"] or "",
                         row["model"], row["requests"], prompt,
                         completion, prompt + completion, row["errors"], row["rate_limited"],
                         "" if row["cost"] is None else f"{row['cost']:.10f}"])  # SQLite sums as floats
    return response


def totals(records) -> dict:
    result = records.aggregate(
        requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
        errors=Count("pk", filter=ERRORS), rate_limited=Count("pk", filter=RATE_LIMITED), cost=Sum("cost"),
    )
    # Sum() of no rows is None (and cost stays None when no record had a price).
    result["prompt"] = result["prompt"] or 0
    result["completion"] = result["completion"] or 0
    result["tokens"] = result["prompt"] + result["completion"]
    return result


def dashboard_context(start: date, end: date, filters: dict[str, str] | None = None) -> dict:
    """Everything the dashboard template shows for the days ``start`` to ``end``, of the
    records ``filters`` (names of FILTERS: values; empty values ignored) select."""
    since, until, chosen, records = selected(start, end, filters)
    buckets = Buckets(start, end)
    x_labels = buckets.labels
    x_label = f"{buckets.name.capitalize()} ({timezone.get_current_timezone_name()})"
    per_key = tokens_by_bucket(records, buckets, ["key_prefix", "api_key__name"],
                               lambda row: key_label(row["api_key__name"], row["key_prefix"]), "Other keys")
    per_model = tokens_by_bucket(records, buckets, ["model"], lambda row: row["model"] or "(no model)",
                                 "Other models")
    per_user = tokens_by_bucket(records, buckets, ["api_key__owner__username"],
                                lambda row: row["api_key__owner__username"] or "(no owner)", "Other people")
    per_team = tokens_by_bucket(records, buckets, ["api_key__team__name"],
                                lambda row: row["api_key__team__name"] or "(no team)", "Other teams")
    per_endpoint = tokens_by_bucket(records, buckets, ["endpoint"], lambda row: row["endpoint"], "Other endpoints")
    per = buckets.name
    return {
        "filters": chosen,
        "bucket": per,
        "start": start,
        "end": end,
        "currency": settings.COST_CURRENCY,
        "totals": totals(records),
        "top_keys": top_keys(records, since, until, chosen),
        "near_budget": keys_near_budget(timezone.now()),
        "team_budgets": team_budgets(timezone.now()),
        "csv_query": urlencode({"start": start.isoformat(), "end": end.isoformat(), **chosen, "format": "csv"}),
        "tokens_per_key_chart": stacked_bar_chart(
            x_labels, per_key, title=f"Tokens per {per} per key", x_label=x_label, y_label="Tokens", unit="tokens"),
        "tokens_per_model_chart": stacked_bar_chart(
            x_labels, per_model, title=f"Tokens per {per} per model", x_label=x_label, y_label="Tokens", unit="tokens"),
        "tokens_per_user_chart": stacked_bar_chart(
            x_labels, per_user, title=f"Tokens per {per} per key owner", x_label=x_label, y_label="Tokens",
            unit="tokens"),
        "tokens_per_team_chart": stacked_bar_chart(
            x_labels, per_team, title=f"Tokens per {per} per team", x_label=x_label, y_label="Tokens", unit="tokens"),
        "tokens_per_endpoint_chart": stacked_bar_chart(
            x_labels, per_endpoint, title=f"Tokens per {per} per endpoint", x_label=x_label, y_label="Tokens",
            unit="tokens"),
        "top_users": top_users(records, since, until, chosen),
        "top_teams": top_teams(records, since, until, chosen),
        "errors_chart": line_chart(
            x_labels, errors_by_bucket(records, buckets), title=f"Errors and rate-limited requests per {per}",
            x_label=x_label, y_label="Requests", unit="requests"),
    }
