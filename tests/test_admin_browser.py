"""The admin in a real browser (Debian's headless Chromium, through Selenium), at the
size of a laptop screen: lists that fit without scrolling sideways, and state badges
that can be read in the light and the dark theme."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import MODEL_ID, PASSWORD, make_user

pytestmark = pytest.mark.browser


@pytest.fixture
def site(server):
    """The session's shared server: a browser needs a real socket to talk to."""
    return server


@pytest.fixture
def admin_page(browser, site):
    """The browser at 1280 x 800, logged in to the admin as a superuser."""
    browser.delete_all_cookies()
    browser.set_window_size(1280, 800)
    user = make_user("admin", is_staff=True, is_superuser=True)
    browser.get(f"{site.base_url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    WebDriverWait(browser, 30).until(lambda _: browser.current_url == f"{site.base_url}/admin/")
    return browser


@pytest.fixture
def keys_and_usage():
    """Three keys of a team with a few requests each, named as people name them."""
    from django.utils import timezone

    from accounts.models import APIKey, UsageRecord

    team = uuid.uuid4().hex[:6]
    owner = make_user("maria.gonzalez")
    now = timezone.now()
    keys = [APIKey.issue(name=f"{team} {name}", owner=owner, max_concurrency=4, requests_per_minute=600,
                         tokens_per_minute=90000, token_budget=5_000_000, allowed_models=["llmserver-demo"])[0]
            for name in ("production web app", "nightly batch summaries", "staging")]
    APIKey.objects.filter(pk__in=[key.pk for key in keys]).update(last_used_at=now, expires_at=now + timedelta(days=90))
    UsageRecord.objects.bulk_create([
        UsageRecord(api_key=key, key_prefix=key.prefix, model="llmserver-demo", endpoint="/v1/chat/completions",
                    request_id=uuid.uuid4().hex, status_code=429 if n == 2 else 200,
                    error_code="rate_limit_exceeded" if n == 2 else "", prompt_tokens=1234, completion_tokens=567,
                    streamed=True, started_at=now - timedelta(minutes=n), duration_ms=12345.678,
                    time_to_first_token_ms=6.302635999873019)
        for key in keys for n in range(3)
    ])
    return team, keys[0]


_WIDTHS = """
    const table = document.getElementById("result_list");
    return {rows: table.tBodies[0].rows.length, table: table.getBoundingClientRect().width,
            container: table.parentElement.clientWidth,
            page: document.documentElement.scrollWidth, window: document.documentElement.clientWidth};
"""


@pytest.mark.parametrize("changelist", ["apikey", "usagerecord"])
def test_at_1280_pixels_the_key_and_usage_lists_fit_without_scrolling_sideways(admin_page, site, keys_and_usage,
                                                                                changelist):
    team, key = keys_and_usage
    query = f"q={team}" if changelist == "apikey" else f"api_key__id__exact={key.pk}"
    admin_page.get(f"{site.base_url}/admin/accounts/{changelist}/?{query}")

    widths = admin_page.execute_script(_WIDTHS)

    assert widths["rows"] == 3
    # clientWidth is in whole pixels, the table's width in fractions: less than a pixel
    # wider is the same width, and scrolls nothing.
    assert widths["table"] < widths["container"] + 1, widths
    assert widths["page"] <= widths["window"], widths


# --- State badges on the Models page --------------------------------------------------

_COLOURS = """
    const shown = arguments[0];
    let behind = shown, background;
    while ((background = getComputedStyle(behind).backgroundColor) === "rgba(0, 0, 0, 0)") {
        behind = behind.parentElement;
    }
    return [getComputedStyle(shown).color, background];
"""


def contrast(foreground: str, background: str) -> float:
    """WCAG's contrast ratio of two opaque CSS colours given as rgb(r, g, b)."""
    def luminance(colour: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"\d+", colour)[:3]]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    lighter, darker = sorted([luminance(foreground), luminance(background)], reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def state_colours(browser, theme: str) -> tuple[str, str]:
    """The text and background colours of the demo model's state word, in a theme."""
    browser.execute_script("document.documentElement.dataset.theme = arguments[0]", theme)
    shown = browser.find_element(
        By.XPATH, f'//tr[@data-model="{MODEL_ID}"]/td[contains(@class, "state")]'
                  '/descendant-or-self::*[normalize-space(text()) = "loaded"]')
    return tuple(browser.execute_script(_COLOURS, shown))


def test_the_loaded_badge_is_readable_in_the_light_and_the_dark_theme(admin_page, site):
    admin_page.get(f"{site.base_url}/admin/models/")

    light, dark = state_colours(admin_page, "light"), state_colours(admin_page, "dark")

    assert contrast(*light) >= 4.5, light
    assert contrast(*dark) >= 4.5, dark
    assert light != dark  # drawn with the admin's colours, which follow its theme


# --- On a phone ------------------------------------------------------------------------


def test_on_a_phone_the_usage_dashboard_scrolls_only_down(admin_page, site, keys_and_usage):
    """390 px wide: the charts shrink to the screen and the wide tables scroll inside
    themselves; the page never scrolls sideways."""
    team, key = keys_and_usage
    key.token_budget = 2000  # 1,801 of it used this period: near its budget
    key.save()
    from accounts.models import UsageCounter, period_start
    from django.utils import timezone

    UsageCounter.objects.create(api_key=key, kind="period", starts_at=period_start(key.budget_period, timezone.now()),
                                tokens=1801)
    admin_page.set_window_size(390, 844)
    admin_page.get(f"{site.base_url}/admin/accounts/usagerecord/dashboard/?key={key.prefix}")
    assert admin_page.find_element(By.ID, "near-budget").is_displayed()
    page, window = admin_page.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert page <= window, (page, window)
    charts = admin_page.find_elements(By.CSS_SELECTOR, "svg.usage-chart")
    assert len(charts) == 6 and all(chart.size["width"] <= window for chart in charts)


def test_the_dashboard_filters_by_team_and_model_and_keeps_them_across_ranges(admin_page, site, keys_and_usage):
    from accounts.models import APIKey, Team

    name, key = keys_and_usage
    team = Team.objects.create(name=f"Team {name}")
    APIKey.objects.filter(pk=key.pk).update(team=team)  # one of the three keys: three records
    admin_page.get(f"{site.base_url}/admin/accounts/usagerecord/dashboard/")
    admin_page.find_element(By.ID, "id_team").send_keys(team.name)
    admin_page.find_element(By.ID, "id_model").send_keys(MODEL_ID)
    admin_page.find_element(By.CSS_SELECTOR, ".usage-range [type=submit]").click()
    WebDriverWait(admin_page, 30).until(lambda page: "team=" in page.current_url)

    def summary():
        return re.sub(r"\s+", " ", admin_page.find_element(By.CLASS_NAME, "usage-summary").text)

    assert f"model {MODEL_ID}, team {team.name}: 3 requests, 5,403 tokens" in summary()
    top_teams = admin_page.find_elements(By.CSS_SELECTOR, "#top-teams tbody tr")
    assert [row.find_element(By.TAG_NAME, "td").text for row in top_teams] == [team.name]
    admin_page.find_element(By.LINK_TEXT, "7 days").click()  # a quick range keeps the filters
    WebDriverWait(admin_page, 30).until(lambda page: "start=" in page.current_url)
    assert f"team {team.name}: 3 requests" in summary()
    admin_page.find_element(By.CSS_SELECTOR, "#top-teams a").click()  # the team's records
    WebDriverWait(admin_page, 30).until(lambda page: "/usagerecord/?" in page.current_url)
    assert len(admin_page.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 3
