"""The operators' admin: API keys with their usage now, the secret shown once, and the
read-only usage records (their CSV export and the usage dashboard are
tests/test_admin_usage.py)."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, LimitScope, Lease, UsageCounter, UsageRecord, hash_secret, period_start


@pytest.fixture(autouse=True)
def _nothing_but_this_tests_rows(empty_database):
    """The admin lists show every row: each test sees only its own."""


KEYS_URL = "/admin/accounts/apikey/"
USAGE_URL = "/admin/accounts/usagerecord/"
DASHBOARD_URL = "/admin/accounts/usagerecord/dashboard/"
EXPORT_URL = "/admin/accounts/usagerecord/export/"
NEW_SECRET = re.compile(r'<code class="new-api-key">(sk-[A-Za-z0-9_-]+)</code>')


def issue(name: str, **fields) -> APIKey:
    key, _ = APIKey.issue(name=name, **fields)
    return key


def record(key: APIKey | None, *, started_at=None, **fields) -> UsageRecord:
    values = {
        "api_key": key, "key_prefix": key.prefix if key else "", "model": "llmserver-demo",
        "endpoint": "/v1/chat/completions", "request_id": "req", "status_code": 200,
        "started_at": started_at or timezone.now(), "duration_ms": 100.0,
    }
    return UsageRecord.objects.create(**{**values, **fields})


def at_noon(days_ago: int) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return datetime.combine(day, time(12), tzinfo=timezone.get_current_timezone())


def row_cells(html: str, key_or_record) -> dict[str, str]:
    """The changelist cells (by list_display name) of the row linking to this object."""
    change_url = reverse(f"admin:accounts_{key_or_record._meta.model_name}_change", args=[key_or_record.pk])
    rows = [row for row in re.findall(r"<tr>(.*?)</tr>", html, re.S) if re.search(f'href="{change_url}["?]', row)]
    assert len(rows) == 1, rows
    cells = re.findall(r'<t[dh] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[dh]>', rows[0], re.S)
    return {name: text_of(value) for name, value in cells}


def text_of(html: str) -> str:
    """The text of an HTML fragment, with the admin's yes/no icons as their alt text."""
    return re.sub(r"<[^>]+>", "", re.sub(r'<img [^>]*alt="(\w+)"[^>]*>', r"\1", html)).strip()


def set_action(client, url: str, action: str, objects) -> object:
    return client.post(url, {"action": action, "_selected_action": [obj.pk for obj in objects]}, follow=True)


# --- Who may see the admin -----------------------------------------------------------


@pytest.mark.parametrize("url", [KEYS_URL, USAGE_URL, DASHBOARD_URL, EXPORT_URL])
def test_an_anonymous_visitor_is_sent_to_the_login_page(db, client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


@pytest.mark.parametrize("url", [KEYS_URL, USAGE_URL, DASHBOARD_URL, EXPORT_URL])
def test_a_user_who_is_not_staff_is_refused(db, client, django_user_model, url):
    issue("secret project")
    client.force_login(django_user_model.objects.create_user("mallory"))

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


def test_staff_without_the_view_permission_cannot_open_the_dashboard(db, client, django_user_model):
    client.force_login(django_user_model.objects.create_user("intern", is_staff=True))

    assert client.get(DASHBOARD_URL).status_code == 403
    assert client.get(EXPORT_URL).status_code == 403


def test_staff_with_the_view_permission_can_open_the_dashboard_but_not_the_keys(db, client, django_user_model):
    user = django_user_model.objects.create_user("analyst", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client.force_login(user)

    assert client.get(DASHBOARD_URL).status_code == 200
    assert client.get(USAGE_URL).status_code == 200
    assert client.get(KEYS_URL).status_code == 403


def test_the_admin_index_and_the_usage_list_link_to_the_dashboard(admin_client):
    index = admin_client.get("/admin/").content.decode()
    app_index = admin_client.get("/admin/accounts/").content.decode()
    usage = admin_client.get(USAGE_URL).content.decode()

    assert f'<a href="{DASHBOARD_URL}">Usage dashboard</a>' in index
    assert f'<a href="{DASHBOARD_URL}">Usage dashboard</a>' in app_index
    assert f'<a href="{DASHBOARD_URL}">Usage dashboard</a>' in usage


@pytest.mark.parametrize(("url", "title"), [
    ("/admin/", "llmserver | llmserver admin"),
    (USAGE_URL, "Select usage record to view | llmserver admin"),
    ("/admin/models/", "Models | llmserver admin"),
])
def test_the_admin_pages_carry_llmservers_name(admin_client, url, title):
    html = admin_client.get(url).content.decode()

    assert f"<title>{title}</title>" in html
    assert '<div id="site-name"><a href="/admin/">llmserver administration</a></div>' in html
    assert "Django" not in html


def test_the_login_page_carries_llmservers_name(client):
    html = client.get("/admin/login/").content.decode()

    assert "<title>Log in | llmserver admin</title>" in html
    assert '<div id="site-name"><a href="/admin/">llmserver administration</a></div>' in html


def test_counters_and_limit_scopes_are_not_in_the_admin(db):
    assert not admin.site.is_registered(UsageCounter)
    assert not admin.site.is_registered(LimitScope)


# --- API keys ------------------------------------------------------------------------


def test_the_key_list_shows_each_key_and_its_usage_now(admin_client, django_user_model):
    now = timezone.now()
    owner = django_user_model.objects.create_user("alice")
    daily = issue("daily", owner=owner, budget_period="day", token_budget=5000, max_concurrency=4,
                  requests_per_minute=60, tokens_per_minute=9000, allowed_models=["llmserver-demo"])
    weekly = issue("weekly", budget_period="week")
    idle = issue("idle")
    # Only the counter of each key's current period counts, not last period's nor a minute's.
    UsageCounter.objects.create(api_key=daily, kind="period", starts_at=period_start("day", now), tokens=1234)
    UsageCounter.objects.create(api_key=daily, kind="period", starts_at=period_start("day", now) - timedelta(days=1),
                                tokens=999)
    UsageCounter.objects.create(api_key=daily, kind="minute", starts_at=now.replace(second=0, microsecond=0),
                                tokens=50)
    UsageCounter.objects.create(api_key=weekly, kind="period", starts_at=period_start("week", now), tokens=777)
    # Live leases are requests in flight; an expired one belongs to a dead process.
    for expires_in in (60, 60, -60):
        Lease.objects.create(api_key=daily, request_id="r", holder="p1", expires_at=now + timedelta(seconds=expires_in))
    Lease.objects.create(api_key=weekly, request_id="r", holder="p1", expires_at=now + timedelta(seconds=60))

    html = admin_client.get(KEYS_URL).content.decode()

    assert row_cells(html, daily) == {
        "key": f"daily ({daily.prefix}…)", "owner": "alice", "active": "True", "tokens_this_period": "1234",
        "in_flight_now": "2",
    }
    assert row_cells(html, weekly)["tokens_this_period"] == "777"
    assert row_cells(html, weekly)["in_flight_now"] == "1"
    assert row_cells(html, idle)["tokens_this_period"] == "0"
    assert row_cells(html, idle)["in_flight_now"] == "0"


def test_the_key_page_shows_its_limits_and_usage_now(admin_client):
    key = issue("daily", budget_period="day", token_budget=5000, max_concurrency=4, requests_per_minute=60,
                tokens_per_minute=9000, allowed_models=["llmserver-demo"])
    UsageCounter.objects.create(api_key=key, kind="period", starts_at=period_start("day", timezone.now()), tokens=1234)

    html = admin_client.get(reverse("admin:accounts_apikey_change", args=[key.pk])).content.decode()

    for name, value in [("max_concurrency", "4"), ("requests_per_minute", "60"), ("tokens_per_minute", "9000"),
                        ("token_budget", "5000"), ("allowed_models", "llmserver-demo")]:
        assert re.search(f'name="{name}" value="{value}"', html), name
    assert '<option value="day" selected>Day</option>' in html
    assert re.search(r'<label>Tokens this period:</label>\s*<div class="readonly">1234</div>', html)
    assert re.search(r'<label>In flight:</label>\s*<div class="readonly">0</div>', html)


def test_a_users_chat_key_is_listed_as_one_and_its_limits_can_be_changed(admin_client, django_user_model):
    bob = django_user_model.objects.create_user("bob")
    chat_key = APIKey.objects.chat_key_for(bob)
    assert APIKey.objects.chat_key_for(bob) == chat_key  # one per user
    api_key = issue("bob's script", owner=bob)

    html = admin_client.get(KEYS_URL + "?kind__exact=chat").content.decode()
    assert row_cells(html, chat_key) == {
        "key": f"Chat: bob ({chat_key.prefix}…)", "owner": "bob", "active": "True", "tokens_this_period": "0",
        "in_flight_now": "0",
    }
    assert reverse("admin:accounts_apikey_change", args=[api_key.pk]) not in html

    form = admin_client.get(reverse("admin:accounts_apikey_change", args=[chat_key.pk])).content.decode()
    assert "Chat page" in form and 'name="max_concurrency" value="2"' in form
    admin_client.post(reverse("admin:accounts_apikey_change", args=[chat_key.pk]), {
        "name": "Chat: bob", "owner": bob.pk, "is_active": "on", "max_concurrency": "1", "allowed_models": "",
        "budget_period": "day", "token_budget": "1000",
    })
    chat_key.refresh_from_db()
    assert (chat_key.kind, chat_key.max_concurrency, chat_key.token_budget) == ("chat", 1, 1000)


def test_the_key_list_takes_the_same_queries_for_one_key_or_many(admin_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as context:
            assert admin_client.get(KEYS_URL).status_code == 200
        return len(context.captured_queries)

    key = issue("first")
    Lease.objects.create(api_key=key, request_id="r", holder="p", expires_at=timezone.now() + timedelta(minutes=1))
    one = queries()
    for n in range(5):
        key = issue(f"key {n}")
        UsageCounter.objects.create(api_key=key, kind="period", starts_at=period_start("month", timezone.now()))
        Lease.objects.create(api_key=key, request_id="r", holder="p", expires_at=timezone.now() + timedelta(minutes=1))

    assert queries() == one


def test_the_key_list_can_be_searched_by_prefix_and_sorted_by_usage(admin_client):
    busy, quiet = issue("busy"), issue("quiet")
    UsageCounter.objects.create(api_key=busy, kind="period", starts_at=period_start("month", timezone.now()),
                                tokens=10)

    found = admin_client.get(KEYS_URL, {"q": quiet.prefix}).content.decode()
    # The changelist sorts by column number, the checkbox column being number 0.
    index = admin.site.get_model_admin(APIKey).list_display.index("tokens_this_period") + 1
    by_usage = admin_client.get(KEYS_URL, {"o": f"-{index}"}).content.decode()

    assert str(quiet) in found and str(busy) not in found
    assert by_usage.index(str(busy)) < by_usage.index(str(quiet))


def test_the_key_pages_never_show_the_hash(admin_client):
    key = issue("alpha")

    change = admin_client.get(f"{KEYS_URL}{key.pk}/change/").content.decode()
    listing = admin_client.get(KEYS_URL).content.decode()

    assert key.hashed_secret not in change
    assert key.hashed_secret not in listing
    assert "hashed_secret" not in change
    assert key.prefix in change


def test_the_add_form_asks_for_no_secret(admin_client):
    html = admin_client.get(f"{KEYS_URL}add/").content.decode()

    assert 'name="name"' in html
    assert 'name="allowed_models"' in html
    assert 'name="hashed_secret"' not in html
    assert 'name="prefix"' not in html
    assert 'name="is_active"' not in html


def add_form(**fields) -> dict:
    return {
        "name": "web app", "owner": "", "expires_at_0": "", "expires_at_1": "", "max_concurrency": "2",
        "allowed_models": "llmserver-demo, other", "requests_per_minute": "", "tokens_per_minute": "",
        "token_budget": "100000", "budget_period": "week", **fields,
    }


def test_creating_a_key_shows_its_secret_once(admin_client):
    response = admin_client.post(f"{KEYS_URL}add/", add_form(), follow=True)

    assert response.redirect_chain == [(KEYS_URL, 302)]
    html = response.content.decode()
    secrets_shown = NEW_SECRET.findall(html)
    assert len(secrets_shown) == 1
    secret = secrets_shown[0]
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", secret)
    assert "Copy it now: it will not be shown again." in html
    key = APIKey.objects.get()
    assert key.hashed_secret == hash_secret(secret)
    assert key.prefix == secret[:12]
    assert (key.name, key.max_concurrency, key.allowed_models) == ("web app", 2, ["llmserver-demo", "other"])
    assert (key.token_budget, key.budget_period, key.is_active) == (100000, "week", True)
    # Stored nowhere, and gone from the next pages.
    assert not [value for value in APIKey.objects.filter(pk=key.pk).values().get().values() if secret in str(value)]
    assert secret not in admin_client.get(KEYS_URL).content.decode()
    assert secret not in admin_client.get(f"{KEYS_URL}{key.pk}/change/").content.decode()


def test_save_and_continue_shows_the_secret_on_the_key_page(admin_client):
    response = admin_client.post(f"{KEYS_URL}add/", add_form(_continue="1"), follow=True)

    key = APIKey.objects.get()
    assert response.redirect_chain == [(f"{KEYS_URL}{key.pk}/change/", 302)]
    assert hash_secret(NEW_SECRET.findall(response.content.decode())[0]) == key.hashed_secret


def test_the_secret_of_a_key_is_escaped_with_its_name(admin_client):
    response = admin_client.post(f"{KEYS_URL}add/", add_form(name="<b>x</b>"), follow=True)

    html = response.content.decode()
    assert "The key for “&lt;b&gt;x&lt;/b&gt;” is <code" in html


def test_the_actions_revoke_and_reactivate_keys(admin_client):
    first, second, untouched = issue("first"), issue("second"), issue("untouched")

    response = set_action(admin_client, KEYS_URL, "revoke_keys", [first, second])

    assert "Revoked 2 key(s)." in response.content.decode()
    first.refresh_from_db(), second.refresh_from_db(), untouched.refresh_from_db()
    assert (first.is_active, second.is_active, untouched.is_active) == (False, False, True)
    assert first.revoked_at is not None and untouched.revoked_at is None

    response = set_action(admin_client, KEYS_URL, "reactivate_keys", [first])

    assert "Reactivated 1 key(s)." in response.content.decode()
    first.refresh_from_db(), second.refresh_from_db()
    assert (first.is_active, first.revoked_at) == (True, None)
    assert second.is_active is False


def test_unticking_active_in_the_form_records_the_revocation(admin_client):
    key = issue("alpha")
    form = add_form(name="alpha")  # the change form has the same editable fields, and is_active

    admin_client.post(f"{KEYS_URL}{key.pk}/change/", form)

    key.refresh_from_db()
    assert key.is_active is False
    assert key.revoked_at is not None


# --- Usage records -------------------------------------------------------------------


def test_the_usage_list_shows_each_request(admin_client):
    key = issue("alpha")
    started = at_noon(1)
    row = record(key, request_id="req-1", prompt_tokens=11, completion_tokens=22, streamed=True,
                 duration_ms=1234.4, time_to_first_token_ms=56.7, started_at=started,
                 status_code=400, error_code="context_length_exceeded")

    html = admin_client.get(USAGE_URL).content.decode()

    assert row_cells(html, row) == {
        "started": started.strftime("%Y-%m-%d 12:00:00"), "key": f"alpha ({key.prefix}…)",
        "model": "llmserver-demo", "status": "400", "tokens": "33", "cost_": "-", "duration": "1234.4 ms",
    }


def test_a_usage_record_is_titled_by_endpoint_model_key_and_time(db):
    key = issue("alpha")
    started = datetime(2026, 12, 2, 9, 8, 7, 654321, tzinfo=timezone.get_current_timezone())

    with_key = record(key, model="llmserver-demo", started_at=started)
    without_model = record(None, model="", endpoint="/v1/models", started_at=started)

    assert str(with_key) == f"/v1/chat/completions · llmserver-demo · {key.prefix}… · 2026-12-02 09:08:07"
    assert str(without_model) == "/v1/models · no key · 2026-12-02 09:08:07"


def test_the_usage_record_page_shows_its_title_and_rounded_durations(admin_client):
    key = issue("alpha")
    row = record(key, request_id="req-76", started_at=at_noon(0), duration_ms=6.302635999873019,
                 time_to_first_token_ms=2.25)

    html = admin_client.get(f"{USAGE_URL}{row.pk}/change/").content.decode()

    assert f"<h2>/v1/chat/completions · llmserver-demo · {key.prefix}… · {at_noon(0):%Y-%m-%d} 12:00:00</h2>" in html
    assert re.search(r'<label>Duration:</label>\s*<div class="readonly">6.3 ms</div>', html)
    assert re.search(r'<label>Time to first token:</label>\s*<div class="readonly">2.2 ms</div>', html)
    assert re.search(r'<label>Request id:</label>\s*<div class="readonly">req-76</div>', html)
    assert "6.302635999873019" not in html
    assert "UsageRecord object" not in html


def test_the_usage_list_is_searched_by_request_id(admin_client):
    key = issue("alpha")
    wanted, other = record(key, request_id="abc123"), record(key, request_id="def456")

    html = admin_client.get(USAGE_URL, {"q": "abc123"}).content.decode()

    assert row_cells(html, wanted)["key"] == f"alpha ({key.prefix}…)"
    assert f"{USAGE_URL}{other.pk}/change/" not in html


def test_the_usage_list_is_searched_by_part_of_a_keys_name_or_its_owner(admin_client, django_user_model):
    dora = django_user_model.objects.create_user("dora")
    web, batch = issue("Production web app", owner=dora), issue("nightly batch")
    on_web, on_batch = record(web, request_id="w"), record(batch, request_id="b")

    by_name = admin_client.get(USAGE_URL, {"q": "web app"}).context["cl"].result_list
    by_owner = admin_client.get(USAGE_URL, {"q": "dora"}).context["cl"].result_list

    assert [row.pk for row in by_name] == [on_web.pk]
    assert [row.pk for row in by_owner] == [on_web.pk]
    assert on_batch.pk in [row.pk for row in admin_client.get(USAGE_URL, {"q": "batch"}).context["cl"].result_list]


def test_usage_records_cannot_be_added_changed_or_deleted(admin_client):
    row = record(issue("alpha"))

    assert admin_client.get(f"{USAGE_URL}add/").status_code == 403
    assert admin_client.post(f"{USAGE_URL}{row.pk}/delete/").status_code == 403
    view = admin_client.get(f"{USAGE_URL}{row.pk}/change/")
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    admin_client.post(f"{USAGE_URL}{row.pk}/change/", {"status_code": "500"})
    row.refresh_from_db()
    assert row.status_code == 200
    changelist = admin_client.get(USAGE_URL).content.decode()
    assert "Add usage record" not in changelist
    assert "delete_selected" not in changelist
    assert UsageRecord.objects.count() == 1


def test_leases_are_listed_read_only(admin_client):
    key = issue("alpha")
    live = Lease.objects.create(api_key=key, request_id="live-1", holder="p1",
                                expires_at=timezone.now() + timedelta(minutes=1))
    dead = Lease.objects.create(api_key=key, request_id="dead-1", holder="p2",
                                expires_at=timezone.now() - timedelta(minutes=1))

    html = admin_client.get("/admin/accounts/lease/").content.decode()

    assert row_cells(html, live)["is_live"] == "True"
    assert row_cells(html, dead)["is_live"] == "False"
    assert row_cells(html, dead)["holder"] == "p2"
    assert admin_client.get("/admin/accounts/lease/add/").status_code == 403


# --- NUL in a query string -----------------------------------------------------------

REGISTERED_MODELS = [model for model in apps.get_models() if admin.site.is_registered(model)]


def changelist_url(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def queries_with_nul(admin_client, model) -> list[dict]:
    """The search, and every parameter of the changelist's filters and date drill-down,
    each given a NUL (the filters read from the page the admin shows for these rows)."""
    changelist = admin_client.get(changelist_url(model)).context["cl"]
    names = [name for spec in changelist.filter_specs for name in spec.expected_parameters()]
    if changelist.date_hierarchy:
        names += [f"{changelist.date_hierarchy}__{part}" for part in ("year", "month", "day")]
    return [{"q": "\x00"}, {"q": "a\x00b"}, {"q": "\x00", "p": "\x00"}] + [{name: "\x00"} for name in names]


@pytest.fixture
def rows_in_every_changelist(django_user_model):
    """A row for each filter to offer choices on (a filter with one choice is not shown)."""
    owner = django_user_model.objects.create_user("carol")
    key = issue("alpha", owner=owner)
    record(key, model="llmserver-demo", started_at=at_noon(0))
    record(issue("beta"), model="other", started_at=at_noon(1), streamed=True, status_code=429)
    Lease.objects.create(api_key=key, request_id="r", holder="p1", expires_at=timezone.now())


def answers_a_page(response, url: str) -> bool:
    """A page, or the admin's own redirect for a query it cannot use."""
    return response.status_code == 200 or (response.status_code == 302 and response["Location"] == f"{url}?e=1")


@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_a_nul_in_a_changelists_query_never_reaches_the_database(admin_client, rows_in_every_changelist, model):
    url = changelist_url(model)
    queries = queries_with_nul(admin_client, model)
    assert {"model": "\x00"} in queries or model is not UsageRecord
    parameters = []

    def record_parameters(execute, sql, params, many, context):
        parameters.extend(params or [])
        return execute(sql, params, many, context)

    for query in queries:
        with connection.execute_wrapper(record_parameters):
            response = admin_client.get(url, query)
        assert answers_a_page(response, url), (query, response.status_code)
    assert [value for value in parameters if isinstance(value, str) and "\x00" in value] == []


@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_on_postgresql_a_nul_in_a_changelists_query_answers_a_page(admin_client, rows_in_every_changelist, model):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): SQLite accepts a NUL in text")
    url = changelist_url(model)

    for query in queries_with_nul(admin_client, model):
        response = admin_client.get(url, query)
        assert answers_a_page(response, url), (query, response.status_code)


def test_a_filter_given_a_nul_is_left_out_and_the_page_says_why(admin_client):
    demo, other = record(issue("alpha"), model="llmserver-demo"), record(issue("beta"), model="other")

    response = admin_client.get(USAGE_URL, {"model": "\x00", "status_code": "200"})

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("Null characters are not allowed.") == 1
    assert {row.pk for row in response.context["cl"].result_list} == {demo.pk, other.pk}
    assert f'href="{EXPORT_URL}?status_code=200" download>Export CSV</a>' in html


# --- Teams and users' limits ---------------------------------------------------------


def test_a_team_is_made_with_its_members_limits_and_defaults_for_their_keys(admin_client, django_user_model):
    from accounts.models import KeyAllowance, Team

    alice, bob = (django_user_model.objects.create_user(name) for name in ("alice", "bob"))
    response = admin_client.post("/admin/accounts/team/add/", {
        "name": "Research", "max_concurrency": "", "requests_per_minute": "120", "tokens_per_minute": "",
        "token_budget": "1000000", "cost_budget": "", "budget_period": "month",
        "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": alice.pk, "memberships-0-is_lead": "on", "memberships-1-user": bob.pk,
        "key_allowance-TOTAL_FORMS": "1", "key_allowance-INITIAL_FORMS": "0",
        "key_allowance-0-max_keys": "3", "key_allowance-0-max_concurrency": "2", "key_allowance-0-budget_period": "day",
        "key_allowance-0-token_budget": "5000",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(name="Research")
    assert (team.requests_per_minute, team.token_budget) == (120, 1_000_000)
    assert sorted(team.memberships.values_list("user__username", "is_lead")) == [("alice", True), ("bob", False)]
    assert (team.key_allowance.max_keys, team.key_allowance.max_concurrency) == (3, 2)
    assert KeyAllowance.of(bob, team) == team.key_allowance

    # A key made here for the team takes the defaults where the form left a limit empty.
    made = admin_client.post(f"{KEYS_URL}add/", add_form(name="team key", owner=bob.pk, team=team.pk, token_budget="",
                                                         budget_period="month", max_concurrency="5"))
    assert made.status_code == 302
    key = APIKey.objects.get(name="team key")
    assert (key.team, key.max_concurrency, key.token_budget, key.budget_period) == (team, 5, 5000, "day")
    listed = admin_client.get("/admin/accounts/team/").content.decode()
    assert '<td class="field-members_count">2</td>' in listed

    carol = django_user_model.objects.create_user("carol")  # not a member
    refused = admin_client.post(f"{KEYS_URL}add/", add_form(name="not hers", owner=carol.pk, team=team.pk))
    assert refused.status_code == 200 and "carol is not a member of Research." in refused.content.decode()


def test_a_users_limits_and_teams_are_on_their_admin_page(admin_client, django_user_model):
    from accounts.models import Team, TeamMembership, UserLimits

    dave = django_user_model.objects.create_user("dave")
    TeamMembership.objects.create(team=Team.objects.create(name="Ops"), user=dave, is_lead=True)
    UserLimits.objects.create(user=dave, max_concurrency=3)
    html = admin_client.get(f"/admin/auth/user/{dave.pk}/change/").content.decode()
    assert "Limits across all the user&#x27;s keys" in html and 'name="limits-0-max_concurrency" value="3"' in html
    assert "Teams" in html and 'name="team_memberships-0-team"' in html
