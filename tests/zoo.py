"""The model zoo (``make model-zoo``, modelzoo/build.py): tiny random-weight models on
real tokenizers and chat templates in ``.zoo/models/<name>/``, and a helper to serve one
in this process's registry (for tests that drive the API in-process, tests/asgi.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

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
def serving(specs: list, *, default: str | None = None, max_loaded: int | None = None,
            step_delay: float = 0.0) -> Iterator[dict]:
    """``specs`` (inference.registry.ModelSpec) as the whole catalogue of this process's
    registry, the default model and those marked ``preload`` loaded: {id: worker} of the
    loaded ones. On exit they are unloaded and the registry's previous catalogue and
    settings are put back, so that a test or module that follows finds it as it was;
    the usage of the requests they served is written."""
    from inference.registry import registry

    before = dict(specs=registry.specs(), default=registry.default, max_loaded=registry.max_loaded,
                  keep_alive=registry.keep_alive, step_delay=registry.step_delay)
    registry.configure(specs, default=default, max_loaded=max_loaded or len(specs), step_delay=step_delay)
    try:
        registry.preload()
        yield {slot.spec.id: slot.worker for slot in registry.slots() if slot.worker is not None}
    finally:
        registry.stop_all()
        registry.configure(**before)
        # The usage of the requests served is written now, while the tests' database
        # access lasts (the accounting thread writes on its own schedule otherwise).
        from accounts.books import books

        books.flush()


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
