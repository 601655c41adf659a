"""The chat page's conversations on the server, in a real browser (Debian's Chromium):
they follow their user to another browser, are searched, renamed, deleted and restored,
exported; with CHAT_HISTORY=browser the server keeps none. (The API itself:
tests/test_chat_history.py.)"""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By

from demomodel.corpus import repeat_prompt
from tests.conftest import make_user, start_server
from tests.test_chat_page import ask, last_answer, log_in, page_ready, texts, until

pytestmark = pytest.mark.browser


def conversation_titles(browser) -> list[str]:
    return [item.get_attribute("textContent").removesuffix("✎×")
            for item in browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation")]


def test_a_conversation_follows_its_user_to_another_browser_and_is_searched_renamed_and_undone(page, site, live_db):
    from chat.models import Conversation
    from tests.conftest import start_browser

    user = make_user("follows")
    log_in(page, site, user)
    assert page.find_element(By.ID, "history-note").text == (
        "Conversations are saved on the server and follow you to any browser.")
    ask(page, repeat_prompt("red boat"))
    assert last_answer(page, "done").text == "red boat"
    page.find_element(By.ID, "new-chat").click()
    ask(page, "What is 2 plus 3?")
    assert last_answer(page, "done").text == "2 plus 3 is 5."
    until(page, lambda: Conversation.objects.filter(user=user).count() == 2)
    from accounts.models import UsageRecord

    # Each answer names its turn's usage record.
    until(page, lambda: UsageRecord.objects.filter(api_key__owner=user).count() == 2)
    until(page, lambda: Conversation.objects.get(user=user, title="What is 2 plus 3?").messages[-1].get("usage"))
    sums = Conversation.objects.get(user=user, title="What is 2 plus 3?")
    record = UsageRecord.objects.get(request_id__in=sums.request_ids)
    assert (record.endpoint, record.completion_tokens) == ("chat.page", sums.messages[-1]["usage"]["completion_tokens"])

    other = start_browser()  # another browser: nothing of the first one's but the server
    try:
        log_in(other, site, user)
        assert conversation_titles(other) == ["What is 2 plus 3?", "Repeat after me: red boat"]
        assert texts(other, "assistant") == ["2 plus 3 is 5."]  # the latest, reopened
        other.find_elements(By.CSS_SELECTOR, "#conversations .conversation-open")[1].click()
        until(other, lambda: texts(other, "assistant") == ["red boat"])
        # Renamed there, it is renamed here (the socket tells this page).
        other.execute_script("window.prompt = () => 'Boats'")
        other.find_elements(By.CSS_SELECTOR, "#conversations .rename")[1].click()
        until(page, lambda: conversation_titles(page) == ["What is 2 plus 3?", "Boats"])
    finally:
        other.quit()

    search = page.find_element(By.ID, "search-conversations")
    search.send_keys("boat")  # in the messages, not the title
    until(page, lambda: conversation_titles(page) == ["Boats"])
    search.clear()
    search.send_keys(" ")  # nothing asked: everything
    until(page, lambda: len(conversation_titles(page)) == 2)

    page.find_elements(By.CSS_SELECTOR, "#conversations .delete")[0].click()
    until(page, lambda: conversation_titles(page) == ["Boats"])
    assert page.find_element(By.ID, "undo-text").text == "Deleted “What is 2 plus 3?”."
    assert Conversation.objects.get(user=user, title="What is 2 plus 3?").deleted_at is not None
    page.find_element(By.ID, "undo-button").click()
    until(page, lambda: conversation_titles(page) == ["What is 2 plus 3?", "Boats"])
    assert texts(page, "assistant") == ["2 plus 3 is 5."]
    assert Conversation.objects.get(user=user, title="What is 2 plus 3?").deleted_at is None
    assert page.find_element(By.ID, "export-links").is_displayed()
    exported = httpx.get(page.find_element(By.ID, "export-md").get_attribute("href"),
                         cookies={"sessionid": page.get_cookie("sessionid")["value"]})
    assert exported.text.startswith("# What is 2 plus 3?\n") and "## Assistant (llmserver-demo)\n\n2 plus 3 is 5.\n" in exported.text


@pytest.fixture(scope="module")
def browser_history_site(tmp_path_factory, live_db):
    server = start_server(tmp_path_factory.mktemp("browser-history"), CHAT_HISTORY="browser")
    yield server
    server.stop()


def test_with_history_in_the_browser_the_server_keeps_none_and_the_page_says_so(page, browser_history_site, live_db):
    from chat.models import Conversation

    user = make_user("local")
    log_in(page, browser_history_site, user)
    assert page.find_element(By.ID, "history-note").text == "Conversations are kept in this browser only."
    ask(page, repeat_prompt("blue cup"))
    assert last_answer(page, "done").text == "blue cup"
    page.refresh()
    page_ready(page)
    assert texts(page, "assistant") == ["blue cup"]
    assert not page.find_element(By.ID, "export-links").is_displayed()
    assert not Conversation.objects.filter(user=user).exists()
