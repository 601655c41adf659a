"""The API keys page (/keys/, chat/keys.py, accounts/self_service.py): a logged-in user
makes keys within the allowance an admin set, sees each secret once, lists and revokes
their own keys and sees their usage; nobody else's keys are theirs to see or revoke, and
every creation and revocation is in the admin's history.

The form posts run through Django's test client against a catalogue of two models; a
key made on the page is then used with the openai SDK against a real server, and the
page itself runs in Debian's Chromium."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.utils import timezone

from accounts.models import APIKey, KeyAllowance, UsageCounter, hash_secret, period_start
from inference.registry import ModelSpec
from tests.conftest import DEMO_MODEL, MODEL_ID, PASSWORD, log_in, make_user, serving

OTHER = "other-model"
SECRET = re.compile(r'<code id="secret">(sk-[A-Za-z0-9_-]+)</code>')


@pytest.fixture(scope="module")
def catalogue(live_db):
    """Two models in this process's catalogue (only the default one loaded)."""
    with serving([ModelSpec(MODEL_ID, str(DEMO_MODEL)), ModelSpec(OTHER, str(DEMO_MODEL))], default=MODEL_ID):
        yield


@pytest.fixture
def alice(catalogue, client):
    user = make_user("alice")
    client.force_login(user)
    return user


def make(client, name="laptop", **fields):
    """POST the form; the response and the secret it shows (None if none)."""
    response = client.post("/keys/", {"name": name, **fields})
    found = SECRET.search(response.content.decode())
    return response, found[1] if found else None


def listed(client) -> dict[str, list[str]]:
    """The key list's rows by key prefix: each row's cells as text."""
    html = client.get("/keys/").content.decode()
    rows = re.findall(r'<tr data-key="([^"]+)">(.*?)</tr>', html, re.S)
    return {prefix: [re.sub(r"<[^>]+>|\s+", " ", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for prefix, row in rows}


def test_a_key_is_made_its_secret_shown_once_and_it_is_in_the_history(alice, client):
    response, secret = make(client, "laptop")
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    key = APIKey.objects.get(hashed_secret=hash_secret(secret))
    assert (key.name, key.owner, key.kind, key.is_active, key.allowed_models, key.expires_at) == (
        "laptop", alice, "api", True, [], None)
    page = response.content.decode()
    assert f'api_key="{secret}"' in page and f"Authorization: Bearer {secret}" in page  # the snippets
    assert 'base_url="http://testserver/v1"' in page

    again = client.get("/keys/").content.decode()
    assert secret not in again and SECRET.search(again) is None  # shown once
    assert listed(client)[key.prefix][:6] == ["laptop", f"{key.prefix}…", "all", f"{key.created_at:%Y-%m-%d %H:%M}",
                                              "never", "active"]
    entry = LogEntry.objects.get(object_id=str(key.pk), content_type__model="apikey")
    assert (entry.user, entry.action_flag, entry.get_change_message()) == (alice, ADDITION, "Created on the API keys page.")


def test_limits_come_from_the_allowance_and_nothing_posted_raises_them(alice, client):
    KeyAllowance.objects.create(user=alice, max_keys=2, tokens_per_minute=100, cost_budget=Decimal("1.5"),
                                budget_period="day")
    _, secret = make(client, "one", tokens_per_minute="999999", max_concurrency="0", token_budget="", is_admin="on",
                     expires_in_days="7")
    key = APIKey.objects.get(hashed_secret=hash_secret(secret))
    assert (key.tokens_per_minute, key.cost_budget, key.budget_period, key.max_concurrency, key.token_budget,
            key.is_admin) == (100, Decimal("1.5"), "day", None, None, False)
    assert timezone.timedelta(days=7) - (key.expires_at - key.created_at) < timezone.timedelta(seconds=5)

    assert make(client, "two")[0].status_code == 201
    refused, none = make(client, "three")
    assert (refused.status_code, none) == (400, None)
    assert "You may hold 2 active keys at once; revoke one to make another." in refused.content.decode()
    assert client.post(f"/keys/{key.pk}/revoke/").status_code == 302
    assert make(client, "three")[0].status_code == 201


def test_keys_are_for_the_models_the_user_may_use(alice, client):
    chat_key = APIKey.objects.chat_key_for(alice)
    assert set(re.findall(r'name="models" value="([^"]+)"', client.get("/keys/").content.decode())) == {MODEL_ID, OTHER}
    chat_key.allowed_models = [MODEL_ID]
    chat_key.save()

    assert re.findall(r'name="models" value="([^"]+)"', client.get("/keys/").content.decode()) == [MODEL_ID]
    refused, _ = make(client, "sneaky", models=[OTHER])
    assert refused.status_code == 400 and APIKey.objects.filter(owner=alice, kind="api").count() == 0
    _, secret = make(client, "scoped")  # none ticked: what the user may use, not all there is
    assert APIKey.objects.get(hashed_secret=hash_secret(secret)).allowed_models == [MODEL_ID]


def test_nobody_sees_or_revokes_another_user_s_keys(alice, client):
    bob = make_user("bob")
    bobs, _ = APIKey.issue(name="bob's", owner=bob)
    _, secret = make(client, "mine")
    mine = APIKey.objects.get(hashed_secret=hash_secret(secret))
    assert list(listed(client)) == [mine.prefix]

    assert client.post(f"/keys/{bobs.pk}/revoke/").status_code == 404
    bobs.refresh_from_db()
    assert bobs.is_active
    assert client.get(f"/keys/{mine.pk}/revoke/").status_code == 405  # only a form's POST revokes
    assert client.post(f"/keys/{mine.pk}/revoke/").status_code == 302
    mine.refresh_from_db()
    assert not mine.is_active and listed(client)[mine.prefix][5] == "revoked"
    entry = LogEntry.objects.get(object_id=str(mine.pk), content_type__model="apikey", action_flag=CHANGE)
    assert (entry.user, entry.get_change_message()) == (alice, "Revoked on the API keys page.")


def test_each_key_shows_its_usage_this_period(alice, client):
    _, secret = make(client, "counted")
    key = APIKey.objects.get(hashed_secret=hash_secret(secret))
    UsageCounter.objects.create(api_key=key, kind="period", starts_at=period_start(key.budget_period, timezone.now()),
                                tokens=1234, cost_units=123_400_000)
    for n in range(3):
        key.usage.create(endpoint="chat.completions", request_id=f"r{n}", status_code=200, started_at=timezone.now(),
                         duration_ms=1.0)
    assert listed(client)[key.prefix][6:9] == ["3", "1234", "0.01234"]


def test_the_page_asks_for_a_login(catalogue, client):
    response = client.get("/keys/")
    assert (response.status_code, response["Location"]) == (302, "/login/?next=/keys/")


def test_a_key_made_on_the_page_works_with_the_openai_sdk_until_revoked_there(server):
    import openai

    user = make_user("sdk")
    with log_in(server, user.username, PASSWORD) as page:
        page.get("/keys/")
        made = page.post("/keys/", data={"name": "sdk", "csrfmiddlewaretoken": page.cookies["csrftoken"]},
                         headers={"Referer": f"{server.base_url}/keys/"})
        assert made.status_code == 201
        secret = SECRET.search(made.text)[1]
        key = APIKey.objects.get(hashed_secret=hash_secret(secret))

        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0)
        answer = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "What is 3 plus 4?"}])
        assert answer.choices[0].message.content == "3 plus 4 is 7."

        revoked = page.post(f"/keys/{key.pk}/revoke/", data={"csrfmiddlewaretoken": page.cookies["csrftoken"]},
                            headers={"Referer": f"{server.base_url}/keys/"})
        assert (revoked.status_code, revoked.headers["Location"]) == (302, "/keys/")
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hello"}])
        assert refused.value.body == {"message": f"The API key {key.prefix}… has been revoked.",
                                      "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}


def test_the_page_in_a_browser_makes_copies_and_revokes_a_key(browser, server):
    from selenium.webdriver.common.by import By

    from tests.conftest import until as until_shown

    def until(predicate):  # read again where a form's post replaces the page meanwhile
        return until_shown(browser, predicate)

    user = make_user("browser")
    browser.delete_all_cookies()
    browser.set_window_size(1280, 900)
    browser.get_log("browser")  # what earlier tests left in the console
    browser.get(f"{server.base_url}/login/?next=/keys/")
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    until(lambda: browser.current_url == f"{server.base_url}/keys/")
    assert browser.find_element(By.CSS_SELECTOR, "#key-list tbody").text == "You have no API keys yet."

    browser.find_element(By.NAME, "name").send_keys("from the browser")
    browser.find_element(By.ID, "create-key").click()
    secret = until(lambda: browser.find_element(By.ID, "secret").text)
    key = APIKey.objects.get(hashed_secret=hash_secret(secret))
    assert (key.owner, key.name) == (user, "from the browser")

    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server.base_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    copy = browser.find_element(By.ID, "copy-secret")
    copy.click()
    until(lambda: copy.text == "Copied")
    clipboard = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; navigator.clipboard.readText().then(done, e => done('error ' + e));")
    assert clipboard == secret

    browser.get(f"{server.base_url}/keys/")  # the secret is not shown again
    assert browser.find_elements(By.ID, "new-secret") == []
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-key="{key.prefix}"]')
    assert row.find_elements(By.TAG_NAME, "td")[5].text == "active"
    row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # Read in one script, in whichever page is there: the post replaces the page, and a
    # row found in one and read in the next is gone ("stale", or "does not belong to the
    # document" in Chromium 156).
    until(lambda: browser.execute_script(
        "const row = document.querySelector(arguments[0]); return row && row.cells[5].textContent.trim();",
        f'tr[data-key="{key.prefix}"]') == "revoked")
    key.refresh_from_db()
    assert not key.is_active
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []  # no CSP refusal


def test_a_user_sees_what_all_their_keys_used_by_day(alice, client):
    from datetime import datetime, time, timedelta

    chat_key = APIKey.objects.chat_key_for(alice)
    api_key, _ = APIKey.issue(name="mine", owner=alice)
    bobs, _ = APIKey.issue(name="bob's", owner=make_user("bob"))
    today = timezone.localdate()

    def used(key, days_ago, tokens, cost=None):
        started = timezone.make_aware(datetime.combine(today - timedelta(days=days_ago), time(9)))
        key.usage.create(endpoint="chat.completions", request_id="r", status_code=200, started_at=started,
                         duration_ms=1.0, prompt_tokens=tokens, completion_tokens=1, cost=cost)

    used(chat_key, 0, 10)
    used(api_key, 0, 20, Decimal("0.0000300000"))
    used(api_key, 3, 5, Decimal("0.1234567000"))
    used(api_key, 20, 999)  # before the days shown
    used(bobs, 0, 777)  # somebody else's

    html = client.get("/keys/").content.decode()
    table = re.search(r'<table id="usage-by-day">(.*?)</table>', html, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    assert rows == [[str(today), "2", "32", "0.00003"], [str(today - timedelta(days=3)), "1", "6", "0.123457"]]


def test_on_a_phone_the_keys_page_scrolls_only_down(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.webdriver.support.ui import Select

    user = make_user("phone")
    APIKey.issue(name="an older key with a long name for a phone screen", owner=user)
    team = a_team("a team with a long name for a phone", user, lead=user, token_budget=1000)  # its tables too
    browser.delete_all_cookies()
    browser.set_window_size(390, 844)
    browser.get(f"{server.base_url}/login/?next=/keys/")
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    WebDriverWait(browser, 30).until(lambda _: browser.current_url == f"{server.base_url}/keys/")
    browser.find_element(By.NAME, "name").send_keys("phone")
    Select(browser.find_element(By.NAME, "team")).select_by_visible_text(team.name)
    browser.find_element(By.ID, "create-key").click()
    WebDriverWait(browser, 30).until(lambda _: browser.find_elements(By.ID, "secret"))
    assert APIKey.objects.get(owner=user, name="phone").team == team
    assert browser.find_element(By.CSS_SELECTOR, ".team .team-members").is_displayed()
    page, window = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    wide = browser.execute_script(
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
        "document.documentElement.clientWidth && !e.closest('.table-wrap')).map(e => e.tagName + '.' + e.className + '#' + e.id + ':' + Math.round(e.getBoundingClientRect().right)).slice(0, 8)")
    assert page <= window, (page, window, wide)


def a_team(name, *members, lead=None, **limits):
    from accounts.models import Team, TeamMembership

    team = Team.objects.create(name=f"{name}-{make_user('x').username[2:]}", **limits)
    for user in members:
        TeamMembership.objects.create(team=team, user=user, is_lead=user == lead)
    return team


def test_a_key_for_a_team_gets_the_teams_defaults_and_only_a_member_may_choose_it(alice, client):
    team = a_team("research", alice)
    other = a_team("other")
    KeyAllowance.objects.create(team=team, max_keys=1, requests_per_minute=30, token_budget=900, budget_period="week")
    page = client.get("/keys/").content.decode()
    assert re.findall(r'<option value="(\d*)"', page) == ["", str(team.pk)]  # theirs only
    assert key_allowances(page) == [
        "You may make a key for the team while you hold fewer than 1 active key. "
        "It gets 30 requests a minute, 900 tokens a week, as an administrator set."]
    _, secret = make(client, "for the team", team=str(team.pk))
    key = APIKey.objects.get(hashed_secret=hash_secret(secret))
    assert (key.team, key.requests_per_minute, key.token_budget, key.budget_period) == (team, 30, 900, "week")
    assert listed(client)[key.prefix][2] == team.name
    refused, _ = make(client, "second", team=str(team.pk))  # the team's allowance: one key
    assert "You may hold 1 active key at once" in refused.content.decode()
    _, own = make(client, "own")  # no team: the default allowance
    assert APIKey.objects.get(hashed_secret=hash_secret(own)).team is None
    sneaky, _ = make(client, "sneaky", team=str(other.pk))
    assert sneaky.status_code == 400 and not APIKey.objects.filter(team=other).exists()
    KeyAllowance.objects.create(user=alice, max_keys=3)  # their own comes first, for the team's keys too
    assert key_allowances(client.get("/keys/").content.decode()) == []


def key_allowances(page: str) -> list[str]:
    """The teams' key allowance lines, as read."""
    return [" ".join(re.sub(r"<[^>]+>", " ", line).split())
            for line in re.findall(r'<p class="key-allowance">(.*?)</p>', page, re.S)]


def test_a_member_sees_the_teams_budget_and_a_lead_sees_each_members_use(alice, client):
    bob = make_user("bob")
    team = a_team("research", alice, bob, lead=alice, token_budget=10_000, budget_period="month")
    now = timezone.now()
    UsageCounter.objects.create(team=team, kind="period", starts_at=period_start("month", now), tokens=2500,
                                cost_units=7_500_000_000)
    alices, _ = APIKey.issue(name="a", owner=alice, team=team)
    bobs, _ = APIKey.issue(name="b", owner=bob, team=team)
    for key, prompt, cost in ((alices, 100, "0.5"), (bobs, 300, "0.25"), (bobs, 40, None)):
        key.usage.create(endpoint="chat.completions", request_id="r", status_code=200, started_at=now, duration_ms=1.0,
                         prompt_tokens=prompt, completion_tokens=10, cost=None if cost is None else Decimal(cost))

    def team_section(page):
        return re.search(r'<section[^>]*data-team="%s">(.*?)</section>' % re.escape(team.name), page, re.S)[1]

    def cells(section, table):
        body = re.search(r'<table class="%s">.*?<tbody>(.*?)</tbody>' % table, section, re.S)[1]
        return [[re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
                for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]

    lead = team_section(client.get("/keys/").content.decode())
    assert "(you lead it)" in lead and 'value="0.2500"' in lead  # 2500 of 10000
    assert re.sub(r"<[^>]+>|\s+", " ", re.search(r'<p class="allowance">(.*?)</p>', lead, re.S)[1]).split() == (
        "This month, the team's keys have used 2500 tokens of its budget of 10000, 0.75 USD.").split()
    assert cells(lead, "team-members") == [[alice.username, "1", "110", "0.5"], [bob.username, "2", "360", "0.25"]]
    assert cells(lead, "team-days") == [[f"{timezone.localdate():%Y-%m-%d}", "3", "470", "0.75"]]

    client.force_login(bob)  # a member, not a lead: the budget, not the others' use
    member = team_section(client.get("/keys/").content.decode())
    assert 'value="0.2500"' in member and "team-members" not in member and alice.username not in member
