"""Take the pages' screenshots for the README (``make screenshot``).

Serves the demo model from a throwaway SQLite database with one user, has a short
conversation (a tool call in it) in Debian's headless Chromium, and writes docs/chat-page.png (desktop) and
docs/chat-page-phone.png; then makes two API keys on the API keys page (one for the
user's team, used for a few questions) and writes docs/keys-page.png (its secret is the
throwaway database's) and the usage dashboard of
the day, docs/usage-dashboard.png. Real answers from the real
model: nothing is staged but the questions. ``--keys-only``: the keys page alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
PORT = 8765
USER, PASSWORD = "ada", "a long demo password"
QUESTIONS = ["Hello", "Repeat after me: tiger lemon", "What is 7 plus 5?", "Count from 1 to 12."]
# Then a tool call: the tool offered in the settings, the question, the tool's result.
TOOLS = ('[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", '
         '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}]')
TOOL_TURNS = ["What is the weather in Paris?", '{"city": "Paris", "temperature": 18, "condition": "sunny"}']
# The user leads a team with a budget, so that the pages show a team's parts.
TEAM = f"""
from django.contrib.auth import get_user_model
from accounts.models import Team, TeamMembership
team = Team.objects.create(name="Research", token_budget=2000, budget_period="month")
TeamMembership.objects.create(team=team, user=get_user_model().objects.get(username="{USER}"), is_lead=True)
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{scratch}/db.sqlite3", "REDIS_URL": "",
               "DJANGO_SUPERUSER_PASSWORD": PASSWORD, "LOG_LEVEL": "WARNING"}
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run([*manage, "createsuperuser", "--noinput", "--username", USER, "--email", "ada@example.com"],
                       cwd=ROOT, env=env, check=True)
        subprocess.run([*manage, "shell", "-c", TEAM], cwd=ROOT, env=env, check=True)
        server = subprocess.Popen([*manage, "serve", "--port", str(PORT)], cwd=ROOT, env=env)
        try:
            _wait_healthy()
            _shoot()
        finally:
            server.terminate()
            server.wait(10)


def _wait_healthy() -> None:
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def _shoot() -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    try:
        browser.set_window_size(1280, 800)
        base = f"http://127.0.0.1:{PORT}"
        browser.get(f"{base}/")
        browser.find_element(By.NAME, "username").send_keys(USER)
        browser.find_element(By.NAME, "password").send_keys(PASSWORD, Keys.ENTER)
        wait.until(lambda b: b.find_element(By.ID, "app").get_attribute("data-connection") == "open")
        if "--keys-only" in sys.argv:
            _shoot_keys(browser, wait, base)
            return
        system = browser.find_element(By.ID, "system-prompt")
        system.clear()
        system.send_keys("You are a helpful assistant.")
        for question in QUESTIONS + TOOL_TURNS:
            if question == TOOL_TURNS[0]:
                browser.execute_script("const t = document.getElementById('tools'); t.value = arguments[0];"
                                       "t.dispatchEvent(new Event('input'))", TOOLS)
            answers = len(browser.find_elements(By.CSS_SELECTOR, "#messages .message.assistant[data-state=done]"))
            prompt = browser.find_element(By.ID, "prompt")
            prompt.send_keys(question, Keys.ENTER)
            wait.until(lambda b: len(b.find_elements(
                By.CSS_SELECTOR, "#messages .message.assistant[data-state=done]")) == answers + 1)
        browser.execute_script("document.querySelector('#messages details.tool-call').open = true;"
                               "const t = document.getElementById('thread'); t.scrollTop = t.scrollHeight")
        time.sleep(0.5)  # let the "Copied"-style transitions settle
        browser.save_screenshot(str(ROOT / "docs" / "chat-page.png"))
        browser.set_window_size(390, 844)
        browser.refresh()
        wait.until(lambda b: b.find_element(By.ID, "app").get_attribute("data-connection") == "open")
        time.sleep(0.5)
        browser.save_screenshot(str(ROOT / "docs" / "chat-page-phone.png"))
        _shoot_keys(browser, wait, base)
    finally:
        browser.quit()


def _shoot_keys(browser, wait, base: str) -> None:
    browser.set_window_size(1280, 1900)  # the new key, the list, the usage, the team and the form
    browser.get(f"{base}/keys/")
    for name, team in (("nightly evals", "Research"), ("notebook", None)):
        browser.find_element(By.NAME, "name").send_keys(name)
        if team:
            Select(browser.find_element(By.NAME, "team")).select_by_visible_text(team)
        browser.find_element(By.ID, "create-key").click()
        wait.until(lambda b: b.find_elements(By.ID, "secret"))
        if team:  # the team's key used, so that the team's parts have numbers
            secret = browser.find_element(By.ID, "secret").text
            for question in QUESTIONS:
                httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=60,
                           json={"model": "llmserver-demo", "messages": [{"role": "user", "content": question}]})
            time.sleep(0.5)  # written within USAGE_WRITE_DELAY_MS
    time.sleep(0.3)
    browser.save_screenshot(str(ROOT / "docs" / "keys-page.png"))
    # The usage dashboard of that day, by the hour (the user is an admin).
    browser.set_window_size(1280, 2600)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    browser.get(f"{base}/admin/accounts/usagerecord/dashboard/?start={day}&end={day}")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "svg.usage-chart"))
    browser.save_screenshot(str(ROOT / "docs" / "usage-dashboard.png"))


if __name__ == "__main__":
    main()
