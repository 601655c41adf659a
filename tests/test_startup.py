"""The model loads when the server starts, and only then; a bad MODEL_PATH stops it clearly."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, server_env, start_server


@pytest.mark.server_process
def test_a_missing_model_folder_stops_the_server_with_one_clear_line(tmp_path):
    server = start_server(tmp_path, wait=False, MODEL_PATH="/nonexistent/model")
    assert server.process.wait(60) == 1
    lines = server.log().strip().splitlines()
    assert lines[-1] == "llmserver: cannot serve MODEL_PATH=/nonexistent/model: model folder /nonexistent/model does not exist"


@pytest.mark.server_process
def test_a_folder_without_genai_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    server = start_server(tmp_path, wait=False, MODEL_PATH=str(tmp_path / "empty"))
    assert server.process.wait(60) == 1
    assert server.log().strip().splitlines()[-1] == (
        f"llmserver: cannot serve MODEL_PATH={tmp_path / 'empty'}: model folder {tmp_path / 'empty'} "
        "has no genai_config.json (not an ONNX Runtime GenAI model folder)")


def test_management_commands_do_not_load_the_model(tmp_path):
    env = server_env(tmp_path, MODEL_PATH="/nonexistent/model")
    for command in (["check"], ["migrate", "--noinput"], ["showmigrations"]):
        result = subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "cannot serve" not in result.stderr
