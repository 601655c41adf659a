"""The README works as written, as a new user would follow it.

- Every environment variable llmserver/settings.py reads is in the README's one table
  of variables and in .env.example, and the table names nothing settings.py does not read.
- Every relative link and image in README.md and docs/*.md points to a file that exists
  (and, for a Markdown file, to a heading that exists when the link names one).
- The README's examples run against a real server (the demo model) and print what the
  README shows. Runnable blocks are marked with ``<!-- test: run -->`` on the line
  before their fence; the block marked ``<!-- test: output -->`` after one is what it
  prints. Shell blocks run in bash from the project folder, Python blocks with this
  interpreter (which has the openai package, requirements-test.txt), one after another
  (the first one exports LLMSERVER_KEY, as a user's shell would keep it), with the
  server's address for http://127.0.0.1:8000.
- The createapikey command line of "Issuing keys" makes the key it says and prints it as
  the last line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.conftest import test_database_url as database_url

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_URL = "http://127.0.0.1:8000"
VENV_PYTHON = ".venv/bin/python"
KEY = re.compile(r"sk-[A-Za-z0-9_-]{43}")
TIMEOUT = 60


# --- the README's blocks ----------------------------------------------------------------


@dataclass
class Block:
    lang: str
    text: str
    line: int  # where the fence opens, for messages
    marker: str = ""  # "run", "output" or ""
    output: Block | None = None  # for a run block: what it prints, if the README shows it


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their test markers."""
    found, marker, fence = [], "", None
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip() == "```":
                found.append(fence)
                fence = None
            else:
                fence.text += line + "\n"
            continue
        if match := re.fullmatch(r"<!-- test: (run|output) -->", line.strip()):
            marker = match.group(1)
        elif line.startswith("```"):
            fence = Block(line[3:].strip(), "", number, marker)
            marker = ""
        elif line.strip():
            marker = ""  # a marker belongs to the fence right after it
    for previous, block in zip(found, found[1:]):
        if block.marker == "output":
            assert previous.marker == "run", f"README.md:{block.line}: an output block must follow a run block"
            previous.output = block
    return found


def runnable() -> list[Block]:
    return [block for block in blocks(README) if block.marker == "run"]


def test_the_quick_start_is_exactly_two_commands():
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first = blocks_in(section)[0]
    commands = [line.split("#", 1)[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def blocks_in(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```$", markdown, flags=re.M | re.S)


def test_the_examples_are_marked_for_this_test():
    """The examples a new user tries first are the ones this file runs."""
    texts = [block.text for block in runnable()]
    assert any("createapikey --name me" in t for t in texts)
    assert any("/v1/models" in t and t.startswith("curl") for t in texts)
    assert any('"stream": true' in t for t in texts)
    assert any("/v1/chat/completions" in t and '"stream"' not in t for t in texts)
    assert any("/v1/completions" in t and '"prompt"' in t for t in texts)
    assert any("from openai import OpenAI" in t for t in texts)
    assert any("createapikey --name alice-laptop --user alice" in t for t in texts)


# --- (a) environment variables ----------------------------------------------------------

SETTINGS_READ = re.compile(r'\b(?:env(?:\.[a-z_]+)?|_switch|_positive_int)\(\s*"([A-Z][A-Z0-9_]*)"')


def settings_names() -> set[str]:
    names = set(SETTINGS_READ.findall((ROOT / "llmserver" / "settings.py").read_text()))
    assert len(names) > 20, names  # the pattern still matches how settings.py reads them
    return names


def readme_table_names() -> list[str]:
    """The names in the first column of README's table of variables (the one table)."""
    lines = README.read_text().splitlines()
    headers = [i for i, line in enumerate(lines) if re.fullmatch(r"\|\s*Variable\s*\|\s*Default\s*\|\s*Meaning\s*\|", line.strip())]
    assert len(headers) == 1, "README.md must have one table of environment variables"
    names = []
    for line in lines[headers[0] + 2:]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1])
    return names


def test_every_variable_settings_reads_is_in_the_readme_table():
    table = readme_table_names()
    assert len(table) == len(set(table)), "a variable is listed twice"
    assert sorted(settings_names() - set(table)) == [], "read in settings.py, missing from README's table"
    assert sorted(set(table) - settings_names()) == [], "in README's table, not read by settings.py"


def test_every_variable_settings_reads_is_in_env_example():
    example = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert sorted(settings_names() - example) == [], "read in settings.py, missing from .env.example"


def test_the_brief_s_variables_keep_their_names():
    assert {"MODEL_PATH", "MODEL_ID", "SERVER_HOST", "SERVER_PORT", "MAX_CONCURRENT_REQUESTS", "DEFAULT_MAX_TOKENS",
            "DEFAULT_TEMPERATURE", "CORS_ORIGINS", "MAX_REQUEST_SIZE_MB", "LOG_LEVEL", "DATABASE_URL",
            "REDIS_URL"} <= set(readme_table_names())


# --- (b) links --------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.M | re.S)
    return {slug(match) for match in re.findall(r"^#+\s+(.*)$", prose, flags=re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(page):
    prose = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert broken == []


# --- (c) the examples, against a real server --------------------------------------------


def as_written(text: str, server) -> str:
    """A block as a user would run it, with this test's server for the README's."""
    text = text.replace(README_URL, server.base_url)
    if not (ROOT / VENV_PYTHON).exists():  # a checkout whose tests run outside .venv
        text = text.replace(VENV_PYTHON, sys.executable)
    return text


def run(block: Block, server, env: dict) -> subprocess.CompletedProcess:
    code = as_written(block.text, server)
    if block.lang == "python":
        command = [sys.executable, "-c", code]
    else:
        assert block.lang in ("sh", "bash"), f"README.md:{block.line}: run blocks are sh or python"
        # What the user's shell keeps for the next block: the exported key.
        command = ["bash", "-e", "-o", "pipefail", "-c",
                   code + '\nprintf "\\n__LLMSERVER_KEY=%s\\n" "${LLMSERVER_KEY:-}"']
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"README.md:{block.line} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def shell_output(done: subprocess.CompletedProcess, env: dict) -> str:
    """The block's own output, the key it exported taken into ``env``."""
    output, _, key = done.stdout.rpartition("\n__LLMSERVER_KEY=")
    if key.strip():
        env["LLMSERVER_KEY"] = key.strip()
    return output


VOLATILE_ID = re.compile(r"(chatcmpl|cmpl)-[0-9a-f]{32}")


def stable(value):
    """A response without what differs from run to run: ``created`` times and
    generated ids."""
    if isinstance(value, dict):
        return {key: stable(item) for key, item in value.items()
                if key != "created" and not (key == "id" and isinstance(item, str) and VOLATILE_ID.fullmatch(item))}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def events(text: str) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
            for line in text.splitlines() if line.startswith("data: ")]


def without_text(event: dict) -> dict:
    event = stable(event)
    for choice in event.get("choices", []):
        choice.get("delta", {}).pop("content", None)
    return event


def text_of(stream: list) -> str:
    return "".join(choice.get("delta", {}).get("content") or ""
                   for event in stream if isinstance(event, dict) for choice in event.get("choices", []))


def assert_prints(block: Block, actual: str) -> None:
    where = f"README.md:{block.output.line}"
    expected = block.output.text
    if block.output.lang == "json":
        assert stable(json.loads(actual)) == stable(json.loads(expected)), where
    elif expected.startswith("data: "):
        # A stream: how the text is cut into chunks depends on timing; the opening chunk,
        # the closing ones, the shape of every chunk and the whole text do not.
        got, shown = events(actual), events(expected)
        assert got[-1] == shown[-1] == "[DONE]", where
        assert stable(got[0]) == stable(shown[0]), where
        assert stable(got[-2]) == stable(shown[-2]), where
        shapes = [without_text(event) for event in shown[1:-2]]
        assert all(without_text(event) in shapes for event in got[1:-2]), where
        assert text_of(got) == text_of(shown), where
    else:
        assert actual.rstrip("\n") == expected.rstrip("\n"), where


@pytest.fixture(scope="module")
def alice(live_db):
    """The user "Issuing keys" names with --user (it says the user must exist)."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get_or_create(username="alice")[0]


def readme_env() -> dict:
    """A user's shell in the project folder; the database is the test suite's (the
    server's), where `make run` would use db.sqlite3."""
    env = {key: value for key, value in os.environ.items() if key != "LLMSERVER_KEY"}
    env["DATABASE_URL"] = database_url()
    return env


def test_the_readme_examples_run_and_print_what_it_shows(server, alice):
    env = readme_env()
    ran = 0
    for block in runnable():
        done = run(block, server, env)
        ran += 1
        output = done.stdout if block.lang == "python" else shell_output(done, env)
        if "createapikey" in block.text and "$(" in block.text:
            assert KEY.fullmatch(env.get("LLMSERVER_KEY", "")), f"README.md:{block.line}: no key exported"
        if block.output is not None:
            assert_prints(block, output)
        elif output.strip().startswith("{"):
            answer = json.loads(output)
            assert "error" not in answer, f"README.md:{block.line}: {output}"
            if "/health" in block.text:
                assert answer["status"] == "ok"  # what the README says it answers
    assert ran >= 6


# --- (d) createapikey as "Issuing keys" shows it -----------------------------------------


def test_the_createapikey_line_makes_the_key_it_describes_and_prints_it_last(alice):
    from django.utils import timezone

    from accounts.models import APIKey, hash_secret

    [block] = [b for b in runnable() if "--name alice-laptop" in b.text]
    command = block.text if (ROOT / VENV_PYTHON).exists() else block.text.replace(VENV_PYTHON, sys.executable)
    done = subprocess.run(["bash", "-e", "-c", command], cwd=ROOT, env=readme_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert KEY.fullmatch(lines[-1]), done.stdout
    assert lines[0].startswith("Created key 'alice-laptop' (sk-")  # as the README says it prints
    assert lines[0].endswith("; the secret is shown only once:")
    key = APIKey.objects.get(hashed_secret=hash_secret(lines[-1]))
    assert (key.name, key.owner, key.max_concurrency, key.allowed_models) == ("alice-laptop", alice, 4, ["llmserver-demo"])
    assert abs(key.expires_at - (timezone.now() + timedelta(days=90))) < timedelta(minutes=5)
