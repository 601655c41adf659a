"""A model folder: whether it can be served, and the context its sequences may hold."""

from __future__ import annotations

import json
from pathlib import Path


class ModelLoadError(Exception):
    """The model folder cannot be served; the message names the path and the cause."""



def check_model_folder(path: str) -> None:
    """Fail with one clear line when a folder cannot be an ONNX Runtime GenAI model."""
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"model path {path} is not a folder")
    config = folder / "genai_config.json"
    if not config.is_file():
        raise ModelLoadError(f"model folder {path} has no genai_config.json (not an ONNX Runtime GenAI model folder)")
    try:
        decoder = json.loads(config.read_text())["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{config} is not a valid genai_config.json ({exc!r})") from None
    filename = decoder.get("filename")
    if filename and not (folder / filename).is_file():
        raise ModelLoadError(f"model folder {path} is missing {filename}, named in genai_config.json")
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(f"model folder {path} has no tokenizer.json")



def effective_context(genai_config: dict, options: dict, max_model_len: int) -> int:
    """The tokens one sequence may hold (prompt and answer): the smallest of
    ``max_model_len``, the model's ``context_length`` and its ``search.max_length`` as the
    engine options overlay it. The engine sizes each sequence's cache by it."""
    context = min(int(genai_config["model"]["context_length"]), max_model_len)
    max_length = {**genai_config.get("search", {}), **options.get("search", {})}.get("max_length")
    return min(context, int(max_length)) if max_length else context


def folder_context(path: str, options: dict, max_model_len: int) -> int | None:
    """:func:`effective_context` of a model folder not loaded, or None if its
    genai_config.json cannot be read."""
    try:
        return effective_context(json.loads((Path(path) / "genai_config.json").read_text()), options, max_model_len)
    except (OSError, ValueError, KeyError, TypeError):
        return None
