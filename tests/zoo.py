"""The model zoo (``make model-zoo``, modelzoo/build.py): tiny random-weight models on
real tokenizers and chat templates in ``.zoo/models/<name>/``, and a helper to serve one
in this process's registry (for tests that drive the API in-process, tests/asgi.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, serving

ZOO = ROOT / ".zoo"
ZOO_MODELS = ZOO / "models"
ZOO_FAMILIES = ("qwen3", "llama3", "mistral", "gemma", "deepseek_r1", "phi3")


def zoo_model(name: str) -> Path:
    """The folder of zoo model ``name``; the test fails when it has not been built."""
    path = ZOO_MODELS / name
    if not (path / "genai_config.json").is_file():
        pytest.fail(f"no zoo model {name} in {ZOO_MODELS}: run `make model-zoo`")
    return path


@contextmanager
def serve_zoo_model(name: str, *, max_batch_size: int = 4, model_options=None, step_delay: float = 0.0):
    """Zoo model ``name`` served as the only model of this process's registry, under the
    id ``name`` (:func:`serving`); its worker."""
    from inference.model_options import ModelOptions
    from inference.registry import ModelSpec

    spec = ModelSpec(name, str(zoo_model(name)), max_batch_size=max_batch_size,
                     model_options=model_options or ModelOptions())
    with serving([spec], default=name, max_loaded=1, step_delay=step_delay) as workers:
        yield workers[name]
