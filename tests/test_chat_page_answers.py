"""What the chat page does with an answer, in a real browser (Debian's Chromium):
Markdown made safe, a refused turn's countdown and its one retry, Regenerate, an
edited question forking a new conversation, and a tool call folded, answered with its
result from the message box."""

from __future__ import annotations

import json
import re

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from demomodel.corpus import repeat_prompt
from tests.conftest import MODEL_ID, make_user, wait_for
from tests.test_chat_page import ask, chat_records, last_answer, log_in, page_ready, set_field, shown, texts, until
from tests.test_chat_page_history import conversation_titles

pytestmark = pytest.mark.browser


MARKDOWN_ANSWER = """Here is the **plan**:

1. Read the file
2. Print it

| step | cost |
|------|------|
| read | 1 |

```python
def greet(name):
    return f"<b>{name}</b>"
```

Careful: <script>alert("md")</script> and <img src=x onerror=alert("md")> stay text,
[this link](javascript:alert("md")) goes nowhere and ![a picture](http://example.com/x.png) is not fetched."""


def test_a_markdown_answer_renders_with_a_highlighted_code_block_whose_copy_copies_the_code(page, site, live_db):
    """The answer comes from the server's history (the page draws it as it would a
    streamed one): Markdown made into lists, a table and a highlighted code block, raw
    HTML and a script link left inert."""
    from chat.models import Conversation

    user = make_user("markdown")
    Conversation.objects.create(user=user, public_id="md-1", title="Markdown", model=MODEL_ID, messages=[
        {"id": "u1", "role": "user", "content": "Show me", "state": "done"},
        {"id": "a1", "role": "assistant", "content": MARKDOWN_ANSWER, "state": "done", "finishReason": "stop"}])
    page.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": site.base_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    log_in(page, site, user)
    page.execute_script("document.title = 'unchanged'")
    until(page, lambda: page.find_elements(By.CSS_SELECTOR, "#messages .code-block"))
    answer = page.find_element(By.CSS_SELECTOR, "#messages .message.assistant .content")
    assert answer.find_element(By.TAG_NAME, "strong").text == "plan"
    assert [li.text for li in answer.find_elements(By.CSS_SELECTOR, "ol > li")] == ["Read the file", "Print it"]
    assert [td.text for td in answer.find_elements(By.CSS_SELECTOR, "table td")] == ["read", "1"]
    code = answer.find_element(By.CSS_SELECTOR, ".code-block pre code")
    assert code.text == 'def greet(name):\n    return f"<b>{name}</b>"'
    assert answer.find_element(By.CSS_SELECTOR, ".code-language").text == "python"
    assert answer.find_elements(By.CSS_SELECTOR, "code .hljs-keyword")  # highlighted
    # Inert: the markup is text, the script link has no target, no picture was made.
    last = answer.find_elements(By.TAG_NAME, "p")[-1]
    assert last.text == ('Careful: <script>alert("md")</script> and <img src=x onerror=alert("md")> stay text,\n'
                         "this link goes nowhere and a picture is not fetched.")
    assert page.find_elements(By.CSS_SELECTOR, "#messages script, #messages img, #messages b") == []
    assert [a.get_attribute("href") for a in answer.find_elements(By.TAG_NAME, "a")] == [None]
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    assert page.title == "unchanged"
    answer.find_element(By.CSS_SELECTOR, ".copy-code").click()
    until(page, lambda: answer.find_element(By.CSS_SELECTOR, ".copy-code").text == "Copied")
    clipboard = page.execute_async_script(
        "const done = arguments[arguments.length - 1]; navigator.clipboard.readText().then(done, e => done('error ' + e));")
    assert clipboard == 'def greet(name):\n    return f"<b>{name}</b>"\n'
    logs = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert logs == []


_COUNTDOWN = """
    const el = [...document.querySelectorAll("#messages .countdown")].pop();
    return el && {text: el.textContent, until: Number(el.dataset.until || 0), now: Date.now()};
"""


def skip_page_clock_to(browser, moment_ms: float) -> None:
    """The page's clock (Date.now) from now on reads ``moment_ms`` onward."""
    browser.execute_script("const real = Date.now, skew = arguments[0] - real(); Date.now = () => real() + skew;",
                           moment_ms)


def test_a_turn_refused_by_a_per_minute_limit_counts_down_and_asks_again_by_itself(page, site, live_db):
    from accounts.models import APIKey

    user = make_user("countdown")
    log_in(page, site, user)
    chat_key = APIKey.objects.filter(owner=user, kind="chat")
    chat_key.update(requests_per_minute=1)
    ask(page, "What is 2 plus 3?")
    assert last_answer(page, "done").text == "2 plus 3 is 5."
    ask(page, "What is 2 plus 3?")
    refused = last_answer(page, "error")
    assert refused.headline == "You have reached your chat limit."
    shown_at = until(page, lambda: page.execute_script(_COUNTDOWN))
    assert 0 < shown_at["until"] - shown_at["now"] <= 60_000  # the rest of the minute
    assert re.fullmatch(r"You can send another message in (\d+ s|1 min)\.", shown_at["text"])
    # The page's clock moved to 40 s before the end, then a second on: the next tick (at
    # most a second later) says so, counted up to the whole second.
    for left in (40, 39):
        skip_page_clock_to(page, shown_at["until"] - left * 1000)
        until(page, lambda: page.execute_script(_COUNTDOWN)["text"] == f"You can send another message in {left} s.")
    chat_key.update(requests_per_minute=None)  # the next minute, as far as the server is concerned
    skip_page_clock_to(page, shown_at["until"] + 10)
    assert last_answer(page, "done").text == "2 plus 3 is 5."  # asked again by itself
    assert texts(page, "user") == ["What is 2 plus 3?", "What is 2 plus 3?"]
    assert [(r.status_code, r.error_code) for r in wait_for_records(user, 3)] == [
        (200, ""), (429, "requests_per_minute_limit"), (200, "")]


def test_a_turn_asked_again_by_itself_and_refused_again_is_not_asked_a_third_time(page, site, live_db):
    from accounts.models import APIKey

    user = make_user("once")
    log_in(page, site, user)
    APIKey.objects.filter(owner=user, kind="chat").update(token_budget=1, budget_period="day")
    ask(page, "What is 2 plus 3?")
    last_answer(page, "done")
    ask(page, "What is 2 plus 3?")
    first = until(page, lambda: page.execute_script(_COUNTDOWN))
    skip_page_clock_to(page, first["until"] + 10)
    until(page, lambda: len(chat_records(user)) == 3)  # asked again: refused again
    second = until(page, lambda: (shown := page.execute_script(_COUNTDOWN)) and shown["until"] > first["until"] and shown)
    skip_page_clock_to(page, second["until"] + 10)
    until(page, lambda: page.execute_script(_COUNTDOWN)["text"] == "You can send another message now.")
    assert [(r.status_code, r.error_code) for r in wait_for_records(user, 3)] == [
        (200, ""), (429, "token_budget_exceeded"), (429, "token_budget_exceeded")]
    assert len(shown(page, "assistant")) == 2


def wait_for_records(user, count: int) -> list:
    wait_for(lambda: len(chat_records(user)) == count, timeout=10)
    return chat_records(user)


def test_regenerate_answers_again_keeping_the_earlier_answer_and_an_edit_forks_a_conversation(page, site, live_db):
    from chat.models import Conversation

    user = make_user("turns")
    log_in(page, site, user)
    ask(page, "What is 2 plus 3?")
    assert last_answer(page, "done").text == "2 plus 3 is 5."
    ask(page, repeat_prompt("red boat"))
    assert last_answer(page, "done").text == "red boat"
    page.find_element(By.CSS_SELECTOR, "#messages .message.assistant:last-child .regenerate").click()
    until(page, lambda: len(chat_records(user)) == 3)  # a new turn, with its own record
    assert last_answer(page, "done").text == "red boat"
    assert texts(page, "assistant") == ["2 plus 3 is 5.", "red boat"]  # in place of the last answer
    first_records = [r.request_id for r in wait_for_records(user, 3)]
    # The earlier answer is kept: paged back to, it is the one shown (and sent on).
    until(page, lambda: answer_shown(page) == ("2 / 2", f"Request {first_records[2]}"))
    page.find_element(By.CSS_SELECTOR, "#messages .message.assistant:last-child .previous-answer").click()
    until(page, lambda: answer_shown(page) == ("1 / 2", f"Request {first_records[1]}"))
    assert texts(page, "assistant") == ["2 plus 3 is 5.", "red boat"]

    # Edit the first question: a new conversation forks from it; this one stays.
    first_question = page.find_elements(By.CSS_SELECTOR, "#messages .message.user")[0]
    page.execute_script("arguments[0].querySelector('.edit').click()", first_question)
    area = first_question.find_element(By.CSS_SELECTOR, ".edit-box textarea")
    area.clear()
    area.send_keys("What is 3 plus 4?")
    first_question.find_element(By.CSS_SELECTOR, ".edit-box .btn-primary").click()
    assert last_answer(page, "done").text == "3 plus 4 is 7."
    assert texts(page, "user") == ["What is 3 plus 4?"]
    until(page, lambda: conversation_titles(page) == ["What is 2 plus 3? (edited)", "What is 2 plus 3?"])
    records = wait_for_records(user, 4)
    until(page, lambda: Conversation.objects.filter(user=user, title="What is 2 plus 3? (edited)").exists()
          and Conversation.objects.get(user=user, title="What is 2 plus 3? (edited)").request_ids == [records[-1].request_id])
    until(page, lambda: Conversation.objects.get(user=user, title="What is 2 plus 3?").messages[-1].get("answerIndex") == 0)
    original = Conversation.objects.get(user=user, title="What is 2 plus 3?")
    assert [m["content"] for m in original.messages] == [
        "What is 2 plus 3?", "2 plus 3 is 5.", repeat_prompt("red boat"), "red boat"]
    assert original.request_ids == first_records  # the answer given again and the one it replaced
    last = original.messages[-1]
    assert (last["requestId"], last["answerIndex"], [a["requestId"] for a in last["answers"]]) == (
        first_records[1], 0, [first_records[2]])


def answer_shown(browser) -> tuple[str, str]:
    """The last answer's place among its question's answers ("1 / 2"), and its record."""
    return tuple(browser.execute_script(
        "const m = document.querySelector('#messages .message.assistant:last-child');"
        "return [(m.querySelector('.answer-number') || {}).textContent || '', m.querySelector('.meta').title];"))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

_READ_TOOL_BLOCKS = """
    return [...document.querySelectorAll("#messages details.tool-call, #messages details.tool-result")].map(d => ({
        kind: d.className, open: d.open, title: d.querySelector("summary").textContent,
        text: d.querySelector(".tool-text").textContent}));
"""


def test_a_tool_call_is_a_folded_block_and_the_composer_sends_its_result(page, site, live_db):
    from chat.models import Conversation

    user = make_user("tools")
    log_in(page, site, user)
    set_field(page, "tools", "[not json")
    assert page.find_element(By.ID, "tools-help").text == "Not a JSON list of tools: none are offered."
    set_field(page, "tools", json.dumps([WEATHER_TOOL]))
    ask(page, "What is the weather in Paris?")
    last_answer(page, "done")
    assert page.execute_script(_READ_TOOL_BLOCKS) == [
        {"kind": "tool-call", "open": False, "title": "Called get_weather", "text": '{\n  "city": "Paris"\n}'}]
    prompt = page.find_element(By.ID, "prompt")
    assert prompt.get_attribute("placeholder") == "The result of get_weather (JSON or text)…"

    ask(page, '{"city": "Paris", "temperature": 18, "condition": "sunny"}')  # the composer answers the call
    until(page, lambda: len(shown(page, "assistant")) == 2)
    assert last_answer(page, "done").text == "In Paris it is 18 degrees and sunny."
    assert page.execute_script(_READ_TOOL_BLOCKS)[1] == {
        "kind": "tool-result", "open": False, "title": "Result of get_weather",
        "text": '{"city": "Paris", "temperature": 18, "condition": "sunny"}'}
    assert prompt.get_attribute("placeholder") == "Send a message…"
    assert [(r.finish_reason, r.status_code) for r in wait_for_records(user, 2)] == [("tool_calls", 200), ("stop", 200)]

    # Kept on the server: the call, its result and the tools offered come back with a reload.
    until(page, lambda: [m["role"] for m in Conversation.objects.get(user=user).messages] == [
        "user", "assistant", "tool", "assistant"] and Conversation.objects.get(user=user).messages[-1]["state"] == "done")
    stored = Conversation.objects.get(user=user)
    call = stored.messages[1]["toolCalls"][0]
    assert (call["name"], call["arguments"], stored.messages[2]["toolCallId"]) == (
        "get_weather", '{"city": "Paris"}', call["id"])
    assert json.loads(stored.settings["tools"]) == [WEATHER_TOOL]
    page.refresh()
    page_ready(page)
    until(page, lambda: len(page.execute_script(_READ_TOOL_BLOCKS)) == 2)
    assert [block["title"] for block in page.execute_script(_READ_TOOL_BLOCKS)] == [
        "Called get_weather", "Result of get_weather"]
    assert json.loads(page.find_element(By.ID, "tools").get_attribute("value")) == [WEATHER_TOOL]

    # "Always calls one": a question that needs no tool is answered with a call too.
    set_field(page, "tool-choice", "required")
    ask(page, "Repeat after me: tiger lemon")
    until(page, lambda: len(page.execute_script(_READ_TOOL_BLOCKS)) == 3)
    last_answer(page, "done")
    assert page.execute_script(_READ_TOOL_BLOCKS)[2]["title"] == "Called get_weather"
    assert wait_for_records(user, 3)[-1].finish_reason == "tool_calls"
    until(page, lambda: Conversation.objects.get(user=user).settings.get("toolChoice") == "required")
