"""The operators' admin over usage: the usage records' CSV export and the usage dashboard
(tests/test_admin.py has the pages of keys and records)."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import UsageCounter, UsageRecord, period_start
from tests.test_admin import DASHBOARD_URL, EXPORT_URL, USAGE_URL, at_noon, issue, record, set_action, text_of


@pytest.fixture(autouse=True)
def _nothing_but_this_tests_rows(empty_database):
    """The usage list, its export and the dashboard show every row: each test sees only
    its own."""


# --- CSV export ----------------------------------------------------------------------

CSV_HEADER = [
    "started_at", "request_id", "key_prefix", "key_name", "model", "endpoint", "status_code", "error_code",
    "streamed", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "finish_reason",
    "duration_ms", "time_to_first_token_ms", "client_disconnected", "user", "cost",
]


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="usage-\d{8}-\d{6}\.csv"', response["Content-Disposition"])
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_the_export_downloads_the_filtered_records(admin_client):
    key = issue("alpha")
    started = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.get_current_timezone())
    record(key, request_id="ok-1", status_code=200, prompt_tokens=1, completion_tokens=2)
    record(key, request_id="limited-1", status_code=429, error_code="rate_limit_exceeded", started_at=started,
           model="llmserver-demo", endpoint="/v1/completions", streamed=True, prompt_tokens=0,
           completion_tokens=0, cached_tokens=0, finish_reason="", duration_ms=1.5,
           time_to_first_token_ms=None, client_disconnected=False, user="=HYPERLINK(1)", cost=Decimal("0.0000125"))

    rows = read_csv(admin_client.get(EXPORT_URL, {"status_code": "429"}))

    assert rows == [CSV_HEADER, [
        "2026-03-04T05:06:07.890000+00:00", "limited-1", key.prefix, "alpha", "llmserver-demo", "/v1/completions",
        "429", "rate_limit_exceeded", "True", "0", "0", "0", "0", "", "1.5", "", "False", "'=HYPERLINK(1)",
        "0.0000125000",
    ]]


def test_the_export_of_all_records_is_not_paginated(admin_client):
    key = issue("alpha")
    UsageRecord.objects.bulk_create([
        UsageRecord(api_key=key, key_prefix=key.prefix, endpoint="/v1/chat/completions", request_id=f"r{n}",
                    status_code=200, started_at=timezone.now(), duration_ms=1.0)
        for n in range(150)
    ])

    rows = read_csv(admin_client.get(EXPORT_URL))

    assert rows[0] == CSV_HEADER
    assert len(rows) == 151


def test_the_usage_list_links_to_the_export_with_its_filters(admin_client):
    html = admin_client.get(USAGE_URL, {"status_code": "429", "q": "x"}).content.decode()

    assert f'href="{EXPORT_URL}?q=x&amp;status_code=429" download>Export CSV</a>' in html


def test_the_export_action_downloads_the_selected_records(admin_client):
    key = issue("alpha")
    chosen, _ = record(key, request_id="chosen"), record(key, request_id="not-chosen")

    rows = read_csv(set_action(admin_client, USAGE_URL, "export_selected", [chosen]))

    assert [row[1] for row in rows] == ["request_id", "chosen"]


# --- Dashboard -----------------------------------------------------------------------


@pytest.fixture
def usage():
    """Two keys over the last days, plus errors, 429s and a record too old to show."""
    alpha, beta = issue("alpha"), issue("beta")
    record(alpha, started_at=at_noon(0), model="m-small", prompt_tokens=1000, completion_tokens=500,
           cost=Decimal("0.0012500000"))
    record(alpha, started_at=at_noon(1), model="m-small", prompt_tokens=100, completion_tokens=20,
           cost=Decimal("0.0001100000"))
    record(beta, started_at=at_noon(0), model="m-large", prompt_tokens=300, completion_tokens=0)
    record(beta, started_at=at_noon(0), model="m-large", status_code=500, error_code="internal_error")
    record(beta, started_at=at_noon(1), model="m-large", status_code=404, error_code="model_not_found")
    record(beta, started_at=at_noon(1), model="m-large", status_code=429, error_code="rate_limit_exceeded")
    record(alpha, started_at=at_noon(20), model="m-small", prompt_tokens=7000, completion_tokens=0)
    return alpha, beta


def test_the_dashboard_charts_tokens_per_key_and_model_per_day(admin_client, usage):
    alpha, beta = usage
    today, yesterday = timezone.localdate().isoformat(), (timezone.localdate() - timedelta(days=1)).isoformat()

    html = admin_client.get(DASHBOARD_URL).content.decode()

    charts = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>', html, re.S)
    assert len(charts) == 6
    per_key, per_model, _, _, _, errors = charts
    assert f"<title>{today}: alpha ({alpha.prefix}…): 1,500 tokens</title>" in per_key
    assert f"<title>{yesterday}: alpha ({alpha.prefix}…): 120 tokens</title>" in per_key
    assert f"<title>{today}: beta ({beta.prefix}…): 300 tokens</title>" in per_key
    # The legend gives each series' total over the range (the 20-day-old record is out).
    assert f"alpha ({alpha.prefix}…) (1,620)</text>" in per_key
    assert f"beta ({beta.prefix}…) (300)</text>" in per_key
    assert f"<title>{today}: m-small: 1,500 tokens</title>" in per_model
    assert "m-large (300)</text>" in per_model
    assert "m-small (1,620)</text>" in per_model
    assert f"<title>{today}: Errors (status ≥ 400, not 429): 1 requests</title>" in errors
    assert f"<title>{yesterday}: Errors (status ≥ 400, not 429): 1 requests</title>" in errors
    assert f"<title>{yesterday}: Rate limited (429): 1 requests</title>" in errors
    assert f"<title>{today}: Rate limited (429): 0 requests</title>" in errors
    # 14 days by default: one point per day and series.
    assert errors.count("<circle") == 28


def test_the_dashboard_sums_the_range_and_ranks_the_keys(admin_client, usage):
    alpha, beta = usage

    html = admin_client.get(DASHBOARD_URL).content.decode()

    summary = re.sub(r"\s+", " ", text_of(re.search(r'<p class="usage-summary">(.*?)</p>', html, re.S).group(1)))
    start = timezone.localdate() - timedelta(days=13)
    assert f'<input type="date" name="start" value="{start.isoformat()}"' in html
    assert summary == (f"From {start.isoformat()} to {timezone.localdate().isoformat()} (UTC): 6 requests, "
                       "1,920 tokens (1,400 prompt + 520 completion), 2 errors, 1 rate-limited (429); "
                       "cost 0.001360 USD.")
    table = re.search(r'<table id="top-keys">(.*?)</table>', html, re.S).group(1)
    rows = [[text_of(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    assert rows == [
        [f"alpha ({alpha.prefix}…)", "2", "1,100", "520", "1,620", "0", "0", "0.001360", "Records"],
        [f"beta ({beta.prefix}…)", "4", "300", "0", "300", "2", "1", "–", "Records"],
    ]


def test_the_top_keys_link_to_their_records_in_the_range(admin_client, usage):
    alpha, _ = usage
    html = admin_client.get(DASHBOARD_URL).content.decode()
    top_keys = re.search(r'<table id="top-keys">(.*?)</table>', html, re.S).group(1)
    link = re.search(r'<a href="([^"]+)">Records</a>', top_keys).group(1).replace("&amp;", "&")

    response = admin_client.get(link)

    assert response.status_code == 200
    shown = response.context["cl"].result_list
    assert sorted(row.prompt_tokens for row in shown) == [100, 1000]  # not the 20-day-old record
    assert {row.api_key for row in shown} == {alpha}


def test_the_dashboard_shows_a_chosen_range(admin_client, usage):
    alpha, _ = usage
    old = timezone.localdate() - timedelta(days=20)

    html = admin_client.get(DASHBOARD_URL, {"start": (old - timedelta(days=1)).isoformat(),
                                            "end": (old + timedelta(days=1)).isoformat()}).content.decode()

    assert f"<title>{old.isoformat()}: alpha ({alpha.prefix}…): 7,000 tokens</title>" in html
    assert "<strong>1</strong> requests" in html
    assert html.count("<circle") == 6  # three days, two series


def test_two_days_or_fewer_are_shown_by_the_hour(admin_client, usage):
    alpha, beta = usage
    today, yesterday = timezone.localdate(), timezone.localdate() - timedelta(days=1)

    html = admin_client.get(DASHBOARD_URL, {"start": yesterday.isoformat(), "end": today.isoformat()}).content.decode()

    assert "<h2>Tokens per hour per key</h2>" in html and "<h2>Errors and rate limiting per hour</h2>" in html
    assert f"<title>{today} 12:00: alpha ({alpha.prefix}…): 1,500 tokens</title>" in html
    assert f"<title>{yesterday} 12:00: alpha ({alpha.prefix}…): 120 tokens</title>" in html
    assert f"<title>{today} 12:00: m-large: 300 tokens</title>" in html
    assert f"<title>{yesterday} 12:00: Rate limited (429): 1 requests</title>" in html
    assert html.count("<circle") == 2 * 48  # two series, 48 hours
    per_key = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>', html, re.S).group(0)
    ticks = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="middle">([^<]*)</text>', per_key)
    assert ticks[:4] == [f"{yesterday:%m-%d}", "03:00", "06:00", "09:00"]  # every third of 48 hours
    assert ticks[8] == f"{today:%m-%d}"


def test_the_dashboard_filters_by_model_endpoint_key_and_owner(admin_client, usage, django_user_model):
    alpha, beta = usage
    beta.owner = django_user_model.objects.create_user("bea")
    beta.save()
    record(alpha, started_at=at_noon(0), model="m-large", endpoint="/v1/completions", prompt_tokens=5)

    def summary(**filters):
        html = admin_client.get(DASHBOARD_URL, filters).content.decode()
        return re.sub(r"\s+", " ", text_of(re.search(r'<p class="usage-summary">(.*?)</p>', html, re.S).group(1)))

    start, today = timezone.localdate() - timedelta(days=13), timezone.localdate()
    assert summary(model="m-large") == (f"From {start} to {today} (UTC), model m-large: 5 requests, 305 tokens "
                                        "(305 prompt + 0 completion), 2 errors, 1 rate-limited (429).")
    assert summary(model="m-large", endpoint="/v1/completions").endswith(": 1 requests, 5 tokens "
                                                                        "(5 prompt + 0 completion), 0 errors, 0 rate-limited (429).")
    assert summary(key=alpha.prefix).endswith(": 3 requests, 1,625 tokens (1,105 prompt + 520 completion), "
                                             "0 errors, 0 rate-limited (429); cost 0.001360 USD.")
    assert summary(user="bea").endswith(": 4 requests, 300 tokens (300 prompt + 0 completion), 2 errors, "
                                        "1 rate-limited (429).")
    html = admin_client.get(DASHBOARD_URL, {"model": "m-large"}).content.decode()
    top_keys = re.search(r'<table id="top-keys">(.*?)</table>', html, re.S).group(1)
    links = [link.replace("&amp;", "&") for link in re.findall(r'<a href="([^"]+)">Records</a>', top_keys)]
    assert len(links) == 2 and all("model__exact=m-large" in link for link in links)
    shown = admin_client.get(links[0]).context["cl"].result_list  # beta's, the most tokens
    assert {(row.api_key, row.model) for row in shown} == {(beta, "m-large")}
    # The quick ranges keep the filters.
    assert f'<a href="?start={today - timedelta(days=6)}&amp;end={today}&amp;model=m-large">7 days</a>' in html


def test_the_dashboard_refuses_a_backwards_range_and_shows_the_default(admin_client, usage):
    html = admin_client.get(DASHBOARD_URL, {"start": "2026-02-01", "end": "2026-01-01"}).content.decode()

    assert "The start must not be after the end." in html
    assert "<strong>6</strong> requests" in html


def test_the_dashboard_escapes_key_and_model_names(admin_client):
    key = issue("<script>alert(1)</script>")
    record(key, model="<img src=x>", prompt_tokens=5)

    html = admin_client.get(DASHBOARD_URL).content.decode()

    assert "<script>alert(1)" not in html
    assert "<img src=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x&gt; (5)</text>" in html


def test_the_dashboard_with_no_usage_says_so(admin_client):
    html = admin_client.get(DASHBOARD_URL).content.decode()

    assert html.count("No usage in this range.") == 7  # six charts and the top keys
    assert "No key with an owner was used in this range." in html
    assert "<strong>0</strong> requests" in html


def test_the_legends_leave_out_keys_and_models_that_used_no_tokens(admin_client, usage):
    alpha, beta = usage
    refused = issue("refused")
    record(refused, model="m-refused", status_code=429, error_code="rate_limit_exceeded")

    html = admin_client.get(DASHBOARD_URL).content.decode()

    per_key, per_model, *_ = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>', html, re.S)
    assert re.findall(r"<text[^>]*>([^<]*\(\d[\d,]*\))</text>", per_key) == [
        f"alpha ({alpha.prefix}…) (1,620)", f"beta ({beta.prefix}…) (300)"]
    assert re.findall(r"<text[^>]*>([^<]*\(\d[\d,]*\))</text>", per_model) == ["m-small (1,620)", "m-large (300)"]
    assert "refused" in html  # still counted where requests are: the top keys table
    assert "m-refused" not in per_model


def test_the_dashboard_puts_small_keys_together_as_other(admin_client):
    for n in range(10):
        record(issue(f"key-{n:02}"), prompt_tokens=100 + n)

    html = admin_client.get(DASHBOARD_URL).content.decode()

    per_key = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>', html, re.S)[0]
    assert per_key.count("<g transform") == 9  # eight keys and "Other keys"
    assert "Other keys (201)</text>" in per_key  # key-00 (100) and key-01 (101)


def test_keys_near_their_budget_show_how_much_of_it_they_used(admin_client):
    now = timezone.now()

    def spent(name, tokens=0, cost_units=0, **budget):
        key = issue(name, **budget)
        UsageCounter.objects.create(api_key=key, kind="period", starts_at=period_start(key.budget_period, now),
                                    tokens=tokens, cost_units=cost_units)
        return key

    nearly = spent("nearly", tokens=900, token_budget=1000)
    spent("far", tokens=100, token_budget=1000)
    spent_cost = spent("spent", cost_units=10**8, cost_budget=Decimal("0.01"), budget_period="day")
    spent("revoked", tokens=999, token_budget=1000).revoke()

    html = admin_client.get(DASHBOARD_URL).content.decode()

    section = re.search(r'<section class="module" id="near-budget">(.*?)</section>', html, re.S).group(1)
    rows = [[text_of(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]]
    assert [[re.sub(r"\s+", " ", cell) for cell in row] for row in rows] == [
        [f"spent ({spent_cost.prefix}…)", "0.01 USD per day", "100% 0.01", "100%"],
        [f"nearly ({nearly.prefix}…)", "1,000 tokens per month", "90% 900", "90%"],
    ]
    assert re.findall(r'<meter [^>]*value="([^"]+)"', section) == ["1.0000", "0.9000"]


def test_the_aggregates_shown_download_as_csv(admin_client, usage):
    alpha, beta = usage
    today, yesterday = timezone.localdate(), timezone.localdate() - timedelta(days=1)
    html = admin_client.get(DASHBOARD_URL, {"model": "m-large"}).content.decode()
    link = re.search(r'<a href="([^"]+)" id="aggregates-csv">', html).group(1).replace("&amp;", "&")
    assert link == f"?start={today - timedelta(days=13)}&end={today}&model=m-large&format=csv"

    response = admin_client.get(DASHBOARD_URL + link)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert list(csv.reader(io.StringIO(response.content.decode()))) == [
        ["day", "key_prefix", "key_name", "team", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
         "errors", "rate_limited", "cost_USD"],
        [str(yesterday), beta.prefix, "beta", "", "m-large", "2", "0", "0", "0", "1", "1", ""],
        [str(today), beta.prefix, "beta", "", "m-large", "2", "300", "0", "300", "1", "0", ""],
    ]
    hourly = admin_client.get(DASHBOARD_URL, {"start": today, "end": today, "format": "csv"}).content.decode()
    assert list(csv.reader(io.StringIO(hourly)))[1:] == sorted([  # by hour, then key prefix
        [f"{today} 12:00", alpha.prefix, "alpha", "", "m-small", "1", "1000", "500", "1500", "0", "0", "0.0012500000"],
        [f"{today} 12:00", beta.prefix, "beta", "", "m-large", "2", "300", "0", "300", "1", "0", ""],
    ], key=lambda row: row[1])


def test_the_dashboard_breaks_usage_down_by_owner_and_endpoint(admin_client, usage, django_user_model):
    alpha, beta = usage
    alpha.owner = django_user_model.objects.create_user("ana")
    alpha.save()
    record(alpha, started_at=at_noon(0), endpoint="/v1/completions", prompt_tokens=5)
    other = issue("ana's other", owner=alpha.owner)
    record(other, started_at=at_noon(0), prompt_tokens=7, completion_tokens=3, cost=Decimal("0.0000100000"))
    today = timezone.localdate().isoformat()

    html = admin_client.get(DASHBOARD_URL).content.decode()

    _, _, per_user, _, per_endpoint, _ = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>',
                                                 html, re.S)
    assert f"<title>{today}: ana: 1,515 tokens</title>" in per_user
    assert f"<title>{today}: (no owner): 300 tokens</title>" in per_user  # beta has none
    assert "ana (1,635)</text>" in per_user
    assert "/v1/chat/completions (1,930)</text>" in per_endpoint and "/v1/completions (5)</text>" in per_endpoint
    table = re.search(r'<table id="top-users">(.*?)</table>', html, re.S).group(1)
    rows = [[text_of(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    assert rows == [["ana", "2", "4", "1,635", "0", "0", "0.001370", "Records"]]
    link = re.search(r'<a href="([^"]+)">Records</a>', table).group(1).replace("&amp;", "&")
    shown = admin_client.get(link).context["cl"].result_list
    assert sorted(row.total_tokens for row in shown) == [5, 10, 120, 1500]  # ana's four, not beta's


def test_the_dashboard_breaks_usage_down_by_team_and_filters_by_one(admin_client, usage):
    from accounts.models import Team

    alpha, beta = usage
    research = Team.objects.create(name="Research")
    alpha.team = research
    alpha.save()
    today = timezone.localdate().isoformat()

    html = admin_client.get(DASHBOARD_URL).content.decode()
    per_team = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart".*?</svg>', html, re.S)[3]
    assert 'aria-label="Tokens per day per team"' in per_team
    assert f"<title>{today}: Research: 1,500 tokens</title>" in per_team
    assert "Research (1,620)</text>" in per_team and "(no team) (300)</text>" in per_team
    table = re.search(r'<table id="top-teams">(.*?)</table>', html, re.S).group(1)
    rows = [[text_of(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    assert rows == [["Research", "1", "2", "1,620", "0", "0", "0.001360", "Records"]]
    link = re.search(r'<a href="([^"]+)">Records</a>', table).group(1).replace("&amp;", "&")
    shown = admin_client.get(link).context["cl"].result_list
    assert sorted(row.total_tokens for row in shown) == [120, 1500]  # the team's, in the range

    filtered = admin_client.get(DASHBOARD_URL, {"team": "Research"})
    assert filtered.context["totals"]["tokens"] == 1620 and filtered.context["totals"]["requests"] == 2
    assert "team Research:" in filtered.content.decode()
    csv_rows = list(csv.reader(io.StringIO(
        admin_client.get(DASHBOARD_URL, {"team": "Research", "format": "csv"}).content.decode())))
    assert [(row[1], row[3], row[8]) for row in csv_rows[1:]] == [(alpha.prefix, "Research", "120"),
                                                                  (alpha.prefix, "Research", "1500")]


def test_each_team_with_a_budget_shows_a_bar_of_its_use_this_period(admin_client):
    from accounts.models import Team

    now = timezone.now()
    ops = Team.objects.create(name="Ops", token_budget=1000)
    lab = Team.objects.create(name="Lab", cost_budget=Decimal("2"), budget_period="day")
    Team.objects.create(name="Free")  # no budget: no bar
    UsageCounter.objects.create(team=ops, kind="period", starts_at=period_start("month", now), tokens=250)
    UsageCounter.objects.create(team=lab, kind="period", starts_at=period_start("day", now), cost_units=15 * 10**9)

    html = admin_client.get(DASHBOARD_URL).content.decode()
    section = re.search(r'<section class="module" id="team-budgets">(.*?)</section>', html, re.S).group(1)
    rows = [[re.sub(r"\s+", " ", text_of(cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]]
    assert rows == [["Lab", "2 USD per day", "75% 1.5", "75%"], ["Ops", "1,000 tokens per month", "25% 250", "25%"]]
    assert re.findall(r'<meter [^>]*value="([^"]+)"', section) == ["0.7500", "0.2500"]
