"""The chat page in a real browser (Debian's headless Chromium, through Selenium): log in,
ask the demo model, watch the answer stream in, stop a long one, and find every turn in
the usage records; model output shown as text, never run; anonymous visitors sent to
log in."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from demomodel.corpus import count_answer, count_prompt, markup_repeat, repeat_prompt
from tests.conftest import DEMO_MODEL, MODEL_ID, PASSWORD, chat_socket, make_user, start_server, until, wait_for

pytestmark = pytest.mark.browser


def log_in(browser, site, user, password: str = PASSWORD) -> None:
    """Through the login page, as a person would."""
    browser.get(f"{site.base_url}/")
    until(browser, lambda: browser.current_url == f"{site.base_url}/login/?next=/")
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    until(browser, lambda: browser.current_url == f"{site.base_url}/")
    page_ready(browser)


def page_ready(browser) -> None:
    """The page connected, its conversations read (from the server, or this browser)."""
    until(browser, lambda: browser.find_element(By.ID, "app").get_attribute("data-connection") == "open")
    until(browser, lambda: browser.find_element(By.ID, "app").get_attribute("data-history") == "ready")


def ask(browser, text: str) -> None:
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(text)
    prompt.send_keys(Keys.ENTER)


@dataclass
class Shown:
    """One message as the page shows it, read in one go (the page may redraw it)."""

    state: str
    text: str  # its .content's textContent: exactly what the page holds
    meta: str
    whole: str  # everything in it, error lines included
    headline: str  # an error's first line ("" without one)
    detail: str  # and the server's message under it


_READ_MESSAGES = """
    return [...document.querySelectorAll("#messages .message." + arguments[0])].map(m => ({
        state: m.dataset.state,
        text: m.querySelector(".content").textContent,
        meta: (m.querySelector(".meta") || {}).textContent || "",
        whole: m.textContent,
        headline: (m.querySelector(".error-title") || {}).textContent || "",
        detail: (m.querySelector(".error-detail") || {}).textContent || "",
    }));
"""


def shown(browser, role: str) -> list[Shown]:
    return [Shown(**message) for message in browser.execute_script(_READ_MESSAGES, role)]


def texts(browser, role: str) -> list[str]:
    return [message.text for message in shown(browser, role)]


def last_answer(browser, *states: str) -> Shown:
    """The last assistant message, once it is in one of ``states``."""
    def ready():
        answers = shown(browser, "assistant")
        return answers and answers[-1].state in states and answers[-1]
    return until(browser, ready)


def set_field(browser, element_id: str, value) -> None:
    browser.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true}));",
        element_id, str(value))


# What a person at the page reads when their other answer holds their one place.
ONE_AT_A_TIME = ("You already have an answer being written, and you may have only one at a time; "
                 "wait for it to finish or stop it, then try again.")


def chat_records(user) -> list:
    from accounts.models import UsageRecord

    return list(UsageRecord.objects.filter(api_key__owner=user, api_key__kind="chat").order_by("started_at"))


def test_a_user_logs_in_gets_the_exact_answer_stops_a_long_one_and_both_are_recorded(page, site, live_db):
    from accounts.models import Lease

    user = make_user("page")
    log_in(page, site, user)

    ask(page, repeat_prompt("tiger lemon"))
    answer = last_answer(page, "done")
    assert answer.text == "tiger lemon"
    assert texts(page, "user") == ["Repeat after me: tiger lemon"]

    set_field(page, "max-tokens", 400)
    ask(page, count_prompt(200))
    until(page, lambda: len(last_answer(page, "streaming").text) >= 5)  # tokens are arriving
    page.find_element(By.ID, "stop").click()
    stopped = last_answer(page, "stopped")
    assert count_answer(200).startswith(stopped.text) and 0 < len(stopped.text) < len(count_answer(200))
    # The engine and the key's concurrency slot are free at once, the page still open.
    wait_for(lambda: site.engine()["running"] == 0, timeout=2)
    wait_for(lambda: not Lease.objects.filter(api_key__owner=user).exists(), timeout=2)

    repeated, counted = wait_for(lambda: len(chat_records(user)) == 2 and chat_records(user))
    assert (repeated.endpoint, repeated.model, repeated.status_code, repeated.finish_reason,
            repeated.client_disconnected) == ("chat.page", MODEL_ID, 200, "stop", False)
    assert repeated.completion_tokens == 2  # "tiger", " lemon" (the end of turn is not counted)
    assert (counted.status_code, counted.finish_reason, counted.client_disconnected) == (200, "", True)
    assert len(stopped.text.split()) <= counted.completion_tokens < 200  # one token per number
    # The page shows how many tokens each answer took, as recorded.
    assert f"{repeated.completion_tokens} tokens" in answer.meta
    assert f"{counted.completion_tokens} tokens" in stopped.meta
    # All of it under the page's Content-Security-Policy, which blocked nothing.
    assert [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"] == []


@pytest.mark.parametrize("template", ['<script>alert("{}")</script>', '<img src=x onerror=alert("{}")>'])
def test_markup_in_a_model_answer_is_shown_as_text(page, site, live_db, template):
    prompt, markup = markup_repeat(template, ["tiger"])  # the demo model repeats these verbatim
    log_in(page, site, make_user("xss"))
    page.execute_script("document.title = 'unchanged'")
    ask(page, prompt)
    answer = last_answer(page, "done")
    assert answer.text == markup  # the model really answered with the markup...
    assert texts(page, "user")[-1] == prompt
    # ...and it is text: no element was made of it, nothing ran.
    assert page.find_elements(By.CSS_SELECTOR, "#messages script, #messages img") == []
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    assert page.title == "unchanged"


def test_a_wrong_password_is_told_on_the_login_page(page, site, live_db):
    user = make_user("typo")
    page.get(f"{site.base_url}/login/")
    page.find_element(By.NAME, "username").send_keys(user.username)
    page.find_element(By.NAME, "password").send_keys("not the password", Keys.ENTER)
    error = until(page, lambda: page.find_element(By.CSS_SELECTOR, ".form-error"))
    assert error.text.startswith("Please enter a correct username and password.")
    assert page.current_url == f"{site.base_url}/login/"


def test_an_anonymous_visitor_is_sent_to_log_in_and_cannot_open_the_socket(page, site):
    page.get(f"{site.base_url}/")
    assert page.current_url == f"{site.base_url}/login/?next=/"
    assert page.find_element(By.NAME, "username").is_displayed()
    # The same origin as the page, but no session: the handshake is refused.
    outcome = page.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const socket = new WebSocket("ws://" + location.host + "/ws/chat");
        socket.onopen = () => done("opened");
        socket.onclose = (event) => done("closed " + event.code);
    """)
    assert outcome == "closed 1006"


def test_conversations_survive_a_reload_and_new_chat_starts_another(page, site, live_db):
    log_in(page, site, make_user("reload"))
    ask(page, repeat_prompt("red boat"))
    assert last_answer(page, "done").text == "red boat"
    page.refresh()
    page_ready(page)
    assert texts(page, "user") == ["Repeat after me: red boat"]
    assert texts(page, "assistant") == ["red boat"]

    page.find_element(By.ID, "new-chat").click()
    assert texts(page, "user") == []
    ask(page, "What is 2 plus 3?")
    assert last_answer(page, "done").text == "2 plus 3 is 5."
    titles = [item.get_attribute("textContent") for item in page.find_elements(By.CSS_SELECTOR, "#conversations .conversation")]
    assert len(titles) == 2
    page.find_element(By.CSS_SELECTOR, "#conversations .conversation:not(.active) .conversation-open").click()
    until(page, lambda: texts(page, "assistant") == ["red boat"])  # read from the server


def test_shift_enter_adds_a_line_and_enter_sends(page, site, live_db):
    log_in(page, site, make_user("keys"))
    prompt = page.find_element(By.ID, "prompt")
    prompt.send_keys("Repeat after me:")
    prompt.send_keys(Keys.SHIFT, Keys.ENTER)
    assert prompt.get_attribute("value") == "Repeat after me:\n"
    assert texts(page, "user") == []
    prompt.send_keys("cat", Keys.ENTER)
    answer = last_answer(page, "done", "error")
    assert texts(page, "user") == ["Repeat after me:\ncat"]
    assert answer.state == "done"
    # Escape stops an answer, as the Stop button does.
    set_field(page, "max-tokens", 400)
    ask(page, count_prompt(200))
    until(page, lambda: last_answer(page, "streaming").text)
    page.find_element(By.ID, "prompt").send_keys(Keys.ESCAPE)
    assert count_answer(200).startswith(last_answer(page, "stopped").text)


def prompt_tokens(messages: list[dict]) -> int:
    """The demo model's prompt tokens for ``messages``, through its own chat template."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(DEMO_MODEL)))
    return len(tokenizer.encode(tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)))


def test_the_system_prompt_temperature_and_model_are_sent_with_the_turn(page, site, live_db):
    user = make_user("settings")
    log_in(page, site, user)
    assert page.find_element(By.ID, "model").get_attribute("value") == MODEL_ID
    set_field(page, "system-prompt", "You are a concise assistant.")
    set_field(page, "temperature", 0)
    ask(page, repeat_prompt("blue bird"))
    assert last_answer(page, "done").text == "blue bird"
    record = wait_for(lambda: chat_records(user))[0]
    # The prompt is the system prompt and the user's message, through the model's template.
    assert record.prompt_tokens == prompt_tokens(
        [{"role": "system", "content": "You are a concise assistant."},
         {"role": "user", "content": repeat_prompt("blue bird")}])
    assert record.prompt_tokens > prompt_tokens([{"role": "user", "content": repeat_prompt("blue bird")}])


def test_copy_puts_the_answer_on_the_clipboard(page, site, live_db):
    page.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": site.base_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    log_in(page, site, make_user("copy"))
    ask(page, repeat_prompt("green apple"))
    assert last_answer(page, "done").text == "green apple"
    copy = "#messages .message.assistant:last-child button.copy"
    page.find_element(By.CSS_SELECTOR, copy).click()
    until(page, lambda: page.find_element(By.CSS_SELECTOR, copy).text == "Copied")
    clipboard = page.execute_async_script(
        "const done = arguments[arguments.length - 1]; navigator.clipboard.readText().then(done, e => done('error ' + e));")
    assert clipboard == "green apple"


def test_a_user_over_their_concurrency_limit_sees_a_clear_message(page, site, live_db):
    from accounts.models import APIKey

    user = make_user("limited")
    log_in(page, site, user)
    APIKey.objects.filter(owner=user, kind="chat").update(max_concurrency=1)

    # Another tab of the same user (a socket with the browser's session) holds the one slot.
    session = {cookie["name"]: cookie["value"] for cookie in page.get_cookies()}
    with chat_socket(site, cookies=session) as other_tab:
        other_tab.send(json.dumps({"type": "chat", "id": "other", "model": MODEL_ID, "max_tokens": 400,
                                   "messages": [{"role": "user", "content": count_prompt(200)}]}))
        assert json.loads(other_tab.recv(timeout=30))["type"] == "start"
        ask(page, repeat_prompt("cat"))
        refused = last_answer(page, "error", "done")
        other_tab.send(json.dumps({"type": "stop", "id": "other"}))
    assert (refused.state, refused.headline, refused.detail) == ("error", "You have reached your chat limit.", ONE_AT_A_TIME)
    # The page is usable again once the other tab's answer is stopped.
    wait_for(lambda: site.engine()["running"] == 0, timeout=5)
    ask(page, repeat_prompt("dog"))
    assert last_answer(page, "done").text == "dog"


def test_the_page_fits_a_phone_and_works_there(page, site, live_db):
    page.set_window_size(390, 844)
    log_in(page, site, make_user("phone"))
    width = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]
    for element_id in ("prompt", "send", "model"):
        assert page.find_element(By.ID, element_id).is_displayed(), element_id
    ask(page, repeat_prompt("small fish"))
    assert last_answer(page, "done").text == "small fish"
    assert page.execute_script("return document.documentElement.scrollWidth") <= width[1]


def test_stop_gives_the_focus_back_to_the_message_box(page, site, live_db):
    log_in(page, site, make_user("focus"))
    set_field(page, "max-tokens", 400)
    ask(page, count_prompt(200))
    until(page, lambda: last_answer(page, "streaming").text)
    page.find_element(By.ID, "stop").click()
    last_answer(page, "stopped")
    assert page.switch_to.active_element.get_attribute("id") == "prompt"
    page.switch_to.active_element.send_keys("typed on")
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "typed on"


def every_conversation(browser) -> list[tuple[list[str], list[tuple]]]:
    """Each conversation of the page's list, newest first, as it shows when opened: the
    user's messages, and each answer's state, text and error lines."""
    conversations = []
    for index in range(len(browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation"))):
        item = browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation")[index]
        conversation = item.get_attribute("data-id")
        item.find_element(By.CSS_SELECTOR, ".conversation-open").click()
        until(browser, lambda: browser.find_element(By.ID, "messages").get_attribute("data-conversation") == conversation)
        conversations.append((texts(browser, "user"), [(answer.state, answer.text, answer.headline, answer.detail)
                                                       for answer in shown(browser, "assistant")]))
    return conversations


def test_two_tabs_answering_at_once_keep_both_conversations_in_both_and_after_a_reload(page, site, live_db):
    from accounts.models import APIKey

    user = make_user("tabs")
    log_in(page, site, user)
    chat_key = APIKey.objects.filter(owner=user, kind="chat")
    chat_key.update(max_concurrency=1)
    # Counting to 200 is cut at max tokens (one token a number): at 20 ms a token, the
    # first tab answers for over two seconds, while the second does all its turns.
    set_field(page, "max-tokens", 120)  # kept for the next tab too
    first = page.current_window_handle
    page.switch_to.new_window("window")
    second = page.current_window_handle
    try:
        page.get(f"{site.base_url}/")
        page_ready(page)

        page.switch_to.window(first)
        ask(page, count_prompt(200))
        until(page, lambda: last_answer(page, "streaming").text)
        # While the first tab answers, the second is refused (one answer at a time), then
        # answers too once the limit allows two.
        page.switch_to.window(second)
        ask(page, repeat_prompt("cat"))
        assert last_answer(page, "error").detail == ONE_AT_A_TIME
        chat_key.update(max_concurrency=2)
        ask(page, count_prompt(20))
        until(page, lambda: last_answer(page, "streaming").text)
        page.switch_to.window(first)
        assert last_answer(page, "done").text == count_answer(120)
        page.switch_to.window(second)
        assert last_answer(page, "done").text == count_answer(20)

        expected = [
            ([repeat_prompt("cat"), count_prompt(20)], [
                ("error", "", "You have reached your chat limit.", ONE_AT_A_TIME),
                ("done", count_answer(20), "", "")]),
            ([count_prompt(200)], [("done", count_answer(120), "", "")]),
        ]
        for window in (first, second):
            page.switch_to.window(window)
            until(page, lambda: len(page.find_elements(By.CSS_SELECTOR, "#conversations .conversation")) == 2)
            assert every_conversation(page) == expected
            page.refresh()
            page_ready(page)
            assert every_conversation(page) == expected
    finally:
        page.switch_to.window(second)
        page.close()
        page.switch_to.window(first)


@pytest.fixture(scope="module")
def thinking_site(tmp_path_factory, live_db):
    """A server with the demo model and an R1-style copy of it (tests/test_reasoning.py),
    whose every word is reasoning."""
    from tests.test_reasoning import R1_TEMPLATE, demo_copy

    base = tmp_path_factory.mktemp("thinking-page")
    r1 = demo_copy(base / "r1", R1_TEMPLATE)
    config = base / "models.toml"
    config.write_text(f'[[models]]\nid = "{MODEL_ID}"\npath = "{DEMO_MODEL}"\n\n'
                      f'[[models]]\nid = "r1"\npath = "{r1}"\npreload = true\n')
    server = start_server(base, MODELS_CONFIG=str(config))
    yield server
    server.stop()


_READ_REASONING = """
    return [...document.querySelectorAll("#messages .message.assistant")].map(m => {
        const details = m.querySelector("details.reasoning");
        return details && {open: details.open, title: details.querySelector("summary").textContent,
                           text: details.querySelector(".reasoning-text").textContent,
                           elements: details.querySelectorAll("*").length};
    });
"""


def thought_title(browser) -> str:
    """The title the page gives the last answer's thinking: how long it took, as it saved it."""
    from chat.models import Conversation

    user = browser.find_element(By.ID, "username").text
    until(browser, lambda: Conversation.objects.filter(user__username=user).exists()
          and Conversation.objects.filter(user__username=user).latest("updated_at").messages[-1].get("thoughtMs"))
    ms = Conversation.objects.filter(user__username=user).latest("updated_at").messages[-1]["thoughtMs"]
    return f"Thought for {max(1, math.ceil(ms / 1000))} s"


def test_a_reasoning_models_thinking_is_folded_above_its_answer_as_text(page, thinking_site, live_db):
    from tests.conftest import bearer, issue_key

    def reasoning_of(prompt):  # what the API answers the same question with
        with httpx.Client(base_url=thinking_site.base_url, headers=bearer(issue_key(name="page-oracle")[1])) as api:
            body = api.post("/v1/chat/completions", json={
                "model": "r1", "messages": [{"role": "user", "content": prompt}]}).json()
        message = body["choices"][0]["message"]
        assert message["content"] == "" and message["reasoning_content"]
        return message["reasoning_content"]

    log_in(page, thinking_site, make_user("thinker"))
    set_field(page, "model", "r1")
    ask(page, repeat_prompt("tiger lemon"))
    answer = last_answer(page, "done")
    [folded] = page.execute_script(_READ_REASONING)
    assert folded == {"open": False, "title": thought_title(page), "text": reasoning_of(repeat_prompt("tiger lemon")),
                      "elements": 2}
    assert answer.text == ""
    page.find_element(By.CSS_SELECTOR, "details.reasoning summary").click()
    assert page.execute_script(_READ_REASONING)[0]["open"]

    prompt, _ = markup_repeat('<img src=x onerror=alert("{}")>', ["tiger"])
    ask(page, prompt)
    last_answer(page, "done")
    folded = page.execute_script(_READ_REASONING)[-1]
    assert folded["text"] == reasoning_of(prompt) and folded["elements"] == 2  # text, never markup
    assert page.find_elements(By.CSS_SELECTOR, "#messages script, #messages img") == []
    # The first answer's block stays as the person left it; a reload keeps the thinking.
    page.refresh()
    until(page, lambda: len(page.execute_script(_READ_REASONING)) == 2)
    assert [entry["text"] for entry in page.execute_script(_READ_REASONING)] == [
        reasoning_of(repeat_prompt("tiger lemon")), reasoning_of(prompt)]
    assert [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"] == []
