"""Build the model zoo: one tiny random-weight model per family on its real tokenizer.

    .venv-build/bin/python -m modelzoo.build [--only NAME] [--force]      (make model-zoo)

Each family gets a Hugging Face folder made here (config of the family's architecture at a
tiny shape, random weights, the family's real ``tokenizer.json`` and chat template, a
``generation_config.json`` like the real model's) and exported with onnxruntime-genai's
builder (``-p fp32 -e cpu``) into ``.zoo/models/<name>/``, so that its ``genai_config.json``
(EOS list, BOS, pad, context length, ``search`` block) is the one a real export of that
family gets. The sources come from ``make zoo-sources`` (modelzoo/fetch.py).

The models talk nonsense: they exist to check loading, tokenization, templates, EOS
handling and memory, not answers. The LM head rows of the EOS ids, of every added token
and of byte tokens that are not valid UTF-8 alone are zeroed while the others give
large logits, so a greedy (or sampled) generation practically never ends early and always
decodes to whole characters: a request for N tokens gets N.

A model is rebuilt only when its recipe changed: ``zoo_recipe.json`` in its folder holds
the digest of the family's recipe, of its source files and of the build's package
versions (``--force`` rebuilds anyway). Each model is assembled in a hidden folder beside
its final place and renamed into place, so ``.zoo/models/<name>`` is never half-written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from modelzoo.families import FAMILIES, TEMPLATES, TOKENIZERS, ZOO, Family, tokenizer_files, vocab_size

MODELS = ZOO / "models"
RECIPE_FILE = "zoo_recipe.json"
# Part of every recipe digest: raise it when the way a model is made here changes in a
# way the recipe fields below do not capture.
BUILD_REVISION = 3

# Like demomodel.benchmodel's ``--shape tiny``: 2 layers, 64 wide, 4 heads, 2 KV heads.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


# ------------------------------------------------------------------ recipe

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe(name: str) -> dict:
    """Everything a model is made from; its digest decides whether to rebuild."""
    from importlib.metadata import version

    from modelzoo import trained

    spec = trained.TRAINED.get(name)
    family = FAMILIES[spec.family if spec else name]
    sources = {f"tokenizers/{family.tokenizer}/{f}": _digest(TOKENIZERS / family.tokenizer / f)
               for f in ("tokenizer.json", "tokenizer_config.json")}
    if family.template:
        sources[f"templates/{family.template}"] = _digest(TEMPLATES / family.template)
    extra = {}
    if spec:
        sources[f"modelzoo/trained/{name}.safetensors"] = _digest(trained.weights_path(name))
        extra = {"trained": dataclasses.asdict(spec), "trained_shape": trained.SHAPE,
                 "expand": _digest(Path(trained.__file__))}
    return {
        "name": name,
        "build_revision": BUILD_REVISION,
        "shape": TINY,
        "family": dataclasses.asdict(family),
        "sources": sources,
        "packages": {p: version(p) for p in ("onnxruntime-genai", "transformers", "torch", "tokenizers")},
        **extra,
    }


def recipe_digest(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()


def built_digest(name: str) -> str | None:
    try:
        return json.loads((MODELS / name / RECIPE_FILE).read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------ build

def never_generated(tok_json_path: Path, tok: dict, eos_ids: list[int], size: int) -> set[int]:
    """Ids whose LM head row is zeroed: EOS, every added token (special ones, which
    decoding skips, and markers such as <think> or <tool_call>, which a random model
    would scatter), and tokens that are not valid UTF-8 alone (onnxruntime-genai's
    decode drops the text after such a token)."""
    from tokenizers import Tokenizer

    hf_tok = Tokenizer.from_file(str(tok_json_path))
    texts = hf_tok.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    stray = {i for i, text in enumerate(texts) if "\ufffd" in text}
    added = {t["id"] for t in tok.get("added_tokens", [])}
    return set(eos_ids) | added | stray


def make_hf(family: Family, hf_dir: Path, seed: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tok, tok_config = tokenizer_files(family)
    hf_dir.mkdir(parents=True)
    (hf_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2), encoding="utf-8")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False, indent=2),
                                                 encoding="utf-8")
    size = vocab_size(tok)

    model_type = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                  "Gemma2ForCausalLM": "gemma2", "Qwen2ForCausalLM": "qwen2",
                  "Phi3ForCausalLM": "phi3"}[family.architecture]
    fields = {**TINY, **copy.deepcopy(family.config)}
    if model_type == "phi3":
        fields.pop("head_dim")  # Phi-3 derives it from hidden_size / num_attention_heads
    config = AutoConfig.for_model(model_type, vocab_size=size, max_position_embeddings=family.context_length,
                                  tie_word_embeddings=family.tie_word_embeddings,
                                  architectures=[family.architecture], **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    eos = family.generation_config.get("eos_token_id", family.config["eos_token_id"])
    eos_ids = eos if isinstance(eos, list) else [eos]
    banned = never_generated(hf_dir / "tokenizer.json", tok, eos_ids, size)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        # large logits: sampling stays close to greedy, and the zeroed rows (logit exactly
        # 0) practically never win. With tied embeddings (qwen3, gemma) those tokens'
        # input embeddings are zero too: harmless for a model that talks nonsense.
        head.normal_(0.0, 0.15)
        head[sorted(banned)] = 0.0
    model.save_pretrained(hf_dir, safe_serialization=True)
    GenerationConfig(**family.generation_config).save_pretrained(hf_dir)
    return {"vocab_size": size, "parameters": sum(p.numel() for p in model.parameters()),
            "never_generated": len(banned)}


def export(hf_dir: Path, out_dir: Path, cache_dir: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", "fp32", "-e", "cpu", "-c", str(cache_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"modelzoo: the builder failed ({' '.join(cmd)})")


def set_search(out_dir: Path, search: dict) -> None:
    path = out_dir / "genai_config.json"
    config = json.loads(path.read_text())
    config["search"].update(search)
    path.write_text(json.dumps(config, indent=4) + "\n")


def check(out_dir: Path, tokens: int | None = 8, greeting: str = "Hello") -> str:
    """Load the export with onnxruntime-genai, render a chat saying ``greeting`` and
    generate ``tokens`` tokens greedily (None: until the model ends its answer, within 64)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(out_dir))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(json.dumps([{"role": "user", "content": greeting}]), add_generation_prompt=True)
    ids = np.asarray(tok.encode(prompt), dtype=np.int32)
    params = og.GeneratorParams(model)
    # max_length stays the model's own: a sliding-window layer needs a cache of at least
    # its window, whatever the prompt's length
    params.set_search_options(do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done() and len(out) < (tokens or 64):
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    if tokens is not None and len(out) != tokens:
        raise SystemExit(f"modelzoo: {out_dir} generated {len(out)} tokens, not {tokens}")
    if tokens is None and not gen.is_done():
        raise SystemExit(f"modelzoo: {out_dir} did not end its answer to Hello within 64 tokens")
    return tok.decode(out)


def swap_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp_dir`` with renames, so it is never half-written."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def build(name: str, force: bool = False, seed: int = 1234) -> bool:
    """Build ``.zoo/models/<name>`` unless it holds this recipe already. True when built."""
    r = recipe(name)
    digest = recipe_digest(r)
    if not force and built_digest(name) == digest:
        print(f"[zoo] {name}: up to date", flush=True)
        return False
    from modelzoo import trained

    t0 = time.monotonic()
    family = FAMILIES.get(name)
    MODELS.mkdir(parents=True, exist_ok=True)
    work = MODELS / f".{name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        if name in trained.TRAINED:
            info = trained.expand(name, work / "hf")
        else:
            info = make_hf(family, work / "hf", seed)
        out = work / "model"
        export(work / "hf", out, work / "cache")
        if family and family.search:
            set_search(out, family.search)
        # the trained models' greeting is the corpus's
        text = check(out, None, "Hello!") if name in trained.TRAINED else check(out)
        (out / RECIPE_FILE).write_text(json.dumps({"digest": digest, "recipe": r, "seed": seed, **info},
                                                  indent=2, ensure_ascii=False) + "\n")
        final = MODELS / name
        swap_into_place(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in final.iterdir())
    print(f"[zoo] {name}: built in {time.monotonic() - t0:.1f}s ({info['parameters'] / 1e6:.1f}M parameters, "
          f"vocab {info['vocab_size']}, {size / 1e6:.0f} MB); greedy answer: {text!r}", flush=True)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from modelzoo.trained import TRAINED

    p.add_argument("--only", action="append", choices=sorted([*FAMILIES, *TRAINED]),
                   help="build only this model (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    args = p.parse_args(argv)
    missing = [t for t in {f.tokenizer for f in FAMILIES.values()} if not (TOKENIZERS / t / "tokenizer.json").is_file()]
    if missing:
        raise SystemExit(f"modelzoo: no tokenizer in .zoo/tokenizers/ for {missing}: run `make zoo-sources` first")
    t0 = time.monotonic()
    for name in args.only or [*FAMILIES, *TRAINED]:
        build(name, force=args.force)
    print(f"[zoo] done in {time.monotonic() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
