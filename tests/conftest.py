"""Fixtures: a real llmserver (Daphne, real engine, demo model) in a subprocess, spoken
to over HTTP; and, for the few tests that must look inside, the engine in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "demo"
MODEL_ID = "llmserver-demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()

    def engine(self) -> dict:
        return self.health()["models"][0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env(tmp_path: Path, **overrides) -> dict:
    env = {
        **os.environ,
        "MODEL_PATH": str(DEMO_MODEL),
        "MODEL_ID": MODEL_ID,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # Each server gets its own SQLite file unless the suite runs against PostgreSQL.
        "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def start_server(tmp_path: Path, *, wait: bool = True, **overrides) -> LiveServer:
    """Start ``manage.py serve`` (Daphne + the engine) on a free port; wait for /health."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    env = server_env(tmp_path, **overrides)
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    if not wait:
        return server
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One llmserver shared by the tests that only talk to it."""
    live = start_server(tmp_path_factory.mktemp("server"), CORS_ORIGINS="https://app.example.com")
    yield live
    live.stop()


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's tokenizer, to count tokens independently of the server."""
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(DEMO_MODEL)))


def chat(api: httpx.Client, content: str, **params) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **params}
    return api.post("/v1/chat/completions", json=body)


def sse_events(response: httpx.Response) -> list:
    """The data payloads of an SSE response, in order ("[DONE]" kept as the string)."""
    import json

    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
