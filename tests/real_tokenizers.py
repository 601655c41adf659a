"""og tokenizers of real models without their weights: a folder holding the demo model's
ONNX (linked), a genai_config.json whose vocabulary, BOS and EOS are the tokenizer's, and
the real tokenizer files from .zoo/tokenizers. Decoding needs no generation, so the demo
weights serve any tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO_TOKENIZERS = ROOT / ".zoo" / "tokenizers"
DEMO = ROOT / "models" / "demo"


def tokenizer_folder(name: str, folder: Path, added_tokens: list[dict] | None = None) -> Path:
    """The folder for ``.zoo/tokenizers/<name>``; ``added_tokens`` ({"content", "special"})
    are appended to its vocabulary, as a fine-tuned family adds its markers."""
    folder.mkdir(parents=True, exist_ok=True)
    for name_on_disk in ("model.onnx", "model.onnx.data"):
        if not (folder / name_on_disk).exists():
            os.symlink(DEMO / name_on_disk, folder / name_on_disk)
    tokenizer = json.loads((ZOO_TOKENIZERS / name / "tokenizer.json").read_text())
    tokenizer_config = json.loads((ZOO_TOKENIZERS / name / "tokenizer_config.json").read_text())
    ids = dict(tokenizer["model"]["vocab"]) if isinstance(tokenizer["model"]["vocab"], dict) else {}
    ids.update({token["content"]: token["id"] for token in tokenizer["added_tokens"]})
    next_id = max(max(ids.values()) + 1, len(tokenizer["model"]["vocab"]))
    for token in added_tokens or []:
        tokenizer["added_tokens"].append({"id": next_id, "content": token["content"], "single_word": False,
                                          "lstrip": False, "rstrip": False, "normalized": False,
                                          "special": token["special"]})
        ids[token["content"]] = next_id
        next_id += 1

    def token_id(value) -> int:
        if isinstance(value, dict):
            value = value.get("content")
        return ids.get(value, 0) if value else 0

    config = json.loads((DEMO / "genai_config.json").read_text())
    eos = token_id(tokenizer_config.get("eos_token"))
    config["model"].update(vocab_size=next_id, bos_token_id=token_id(tokenizer_config.get("bos_token")),
                           eos_token_id=[eos], pad_token_id=eos)
    (folder / "genai_config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False))
    return folder


def og_tokenizer(folder: Path):
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(folder)))


# --- loaded once per test process ---------------------------------------------------------
#
# Loading a real tokenizer takes seconds (gemma's tokenizer.json is 33 MB), and tests make
# many folders alike (the same tokenizer beside other templates, or beside the demo
# network). What is loaded from a folder is kept under the folder's contents, so a folder
# made alike, or the same folder again, gets the object already loaded; a folder whose
# files change is read again.

# Files of a model folder that no tokenizer or template is read from.
NETWORK_FILES = frozenset({"model.onnx", "model.onnx.data", "genai_config.json"})

_digests: dict = {}
_loaded: dict = {}


def folder_contents(folder: Path) -> tuple:
    """What a tokenizer or template could be read from in ``folder``: each file's name
    and a digest of its bytes (the model's network and genai_config.json left out)."""
    folder = Path(folder)
    files = sorted(entry for entry in folder.iterdir() if entry.name not in NETWORK_FILES)
    stats = tuple((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in files)
    key = (folder.resolve(), stats)
    if key not in _digests:
        _digests[key] = tuple((entry.name, hashlib.sha256(entry.read_bytes()).hexdigest()) if entry.is_file()
                              else (entry.name, folder_contents(entry)) for entry in files)
    return _digests[key]


def _once(kind: str, folder: Path, load):
    key = (kind, folder_contents(folder))
    if key not in _loaded:
        _loaded[key] = load()
    return _loaded[key]


def hf_tokenizer(folder: Path):
    """transformers' tokenizer of ``folder`` (AutoTokenizer), loaded once per contents."""
    from transformers import AutoTokenizer

    return _once("transformers", folder, lambda: AutoTokenizer.from_pretrained(folder))


def prompt_format(folder: Path, model_id: str = "m"):
    """inference.chat_template.PromptFormat of ``folder`` as the engine loads it, loaded
    once per contents (for another ``model_id``, the same tokenizer and template)."""
    import dataclasses

    from inference.chat_template import PromptFormat

    loaded = _once("prompt_format", folder, lambda: PromptFormat.load(model_id, folder))
    return loaded if loaded.model_id == model_id else dataclasses.replace(loaded, model_id=model_id)
