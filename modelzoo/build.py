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

ZOO = Path(__file__).resolve().parent.parent / ".zoo"
TOKENIZERS = ZOO / "tokenizers"
TEMPLATES = ZOO / "templates"
MODELS = ZOO / "models"
RECIPE_FILE = "zoo_recipe.json"
# Part of every recipe digest: raise it when the way a model is made here changes in a
# way the recipe fields below do not capture.
BUILD_REVISION = 3

# Like demomodel.benchmodel's ``--shape tiny``: 2 layers, 64 wide, 4 heads, 2 KV heads.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


@dataclasses.dataclass(frozen=True)
class Family:
    architecture: str           # the Hugging Face architecture (config.json "architectures")
    tokenizer: str              # .zoo/tokenizers/<tokenizer>
    context_length: int         # max_position_embeddings, hence genai_config context_length
    config: dict                # architecture config fields beyond TINY (special ids, rope, ...)
    generation_config: dict     # as in the real model's generation_config.json
    template: str | None = None  # .zoo/templates/<template>; None keeps the tokenizer's own
    tokenizer_patch: str | None = None   # name of a function in TOKENIZER_PATCHES
    tokenizer_config: dict = dataclasses.field(default_factory=dict)  # keys set in tokenizer_config.json
    search: dict = dataclasses.field(default_factory=dict)  # set in genai_config "search" after export
    tie_word_embeddings: bool = False


FAMILIES: dict[str, Family] = {
    # Qwen3-0.6B: config.json names bos/eos 151643/151645, generation_config samples.
    "qwen3": Family(
        architecture="Qwen3ForCausalLM",
        tokenizer="qwen3",
        context_length=40960,
        config=dict(bos_token_id=151643, eos_token_id=151645, rope_theta=1000000.0, rms_norm_eps=1e-6),
        generation_config=dict(bos_token_id=151643, pad_token_id=151643, do_sample=True,
                               eos_token_id=[151645, 151643], temperature=0.6, top_k=20, top_p=0.95),
        tokenizer_config=dict(model_max_length=40960),
        tie_word_embeddings=True,
    ),
    # Llama-3.1-8B-Instruct: llama3 RoPE scaling to 131072 positions.
    "llama3": Family(
        architecture="LlamaForCausalLM",
        tokenizer="llama3_1",
        context_length=131072,
        config=dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009], rms_norm_eps=1e-5,
                    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                         low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192)),
        generation_config=dict(bos_token_id=128000, do_sample=True, eos_token_id=[128001, 128008, 128009],
                               temperature=0.6, top_p=0.9),
        template="meta-llama-Llama-3.1-8B-Instruct.jinja",
        tokenizer_patch="llama3_1",
        tokenizer_config=dict(model_max_length=131072),
    ),
    # A SentencePiece (Llama 2 / Mistral 7B) tokenizer with Mistral's [INST] template.
    "mistral": Family(
        architecture="MistralForCausalLM",
        tokenizer="llama2",
        context_length=32768,
        config=dict(bos_token_id=1, eos_token_id=2, rope_theta=1000000.0, rms_norm_eps=1e-5, sliding_window=None),
        generation_config=dict(bos_token_id=1, eos_token_id=2),
        template="mistralai-Mistral-Nemo-Instruct-2407.jinja",
        tokenizer_config=dict(model_max_length=32768),
    ),
    # Gemma 3's tokenizer and template on the Gemma 2 architecture (sliding-window and
    # global layers alternating, logit soft-capping, tied embeddings): onnxruntime-genai
    # 0.18's builder cannot export Gemma3ForCausalLM under transformers 5, whose Gemma 3
    # config nests its two RoPE settings per layer type (KeyError: 'rope_type').
    # generation_config as gemma-3-1b-it's.
    "gemma": Family(
        architecture="Gemma2ForCausalLM",
        tokenizer="gemma3",
        context_length=32768,
        config=dict(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, query_pre_attn_scalar=16,
                    sliding_window=512, layer_types=["sliding_attention", "full_attention"],
                    rms_norm_eps=1e-6),
        generation_config=dict(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, do_sample=True,
                               top_k=64, top_p=0.95),
        tokenizer_config=dict(model_max_length=32768),
        tie_word_embeddings=True,
    ),
    # DeepSeek-R1-Distill-Qwen: Qwen2 architecture, DeepSeek's tokenizer and R1 template.
    "deepseek_r1": Family(
        architecture="Qwen2ForCausalLM",
        tokenizer="deepseek_v3",
        context_length=131072,
        config=dict(bos_token_id=0, eos_token_id=1, rope_theta=1000000.0, rms_norm_eps=1e-5),
        generation_config=dict(bos_token_id=0, eos_token_id=1, do_sample=True, temperature=0.6, top_p=0.95),
        template="deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        tokenizer_config=dict(model_max_length=131072),
    ),
    # Phi-3.5-mini-instruct: the Llama 2 SentencePiece vocabulary plus Phi-3's chat tokens,
    # LongRoPE from 4096 to 131072 positions. Microsoft's ONNX exports of Phi-3 ship
    # search.top_k = 1 (greedy unless a request asks otherwise), set here after the export.
    "phi3": Family(
        architecture="Phi3ForCausalLM",
        tokenizer="llama2",
        context_length=131072,
        config=dict(bos_token_id=1, eos_token_id=32000, pad_token_id=32000, original_max_position_embeddings=4096,
                    sliding_window=262144, rms_norm_eps=1e-5,
                    # "type" as in Phi-3.5's config.json: the builder reads that key
                    rope_parameters=dict(type="longrope", rope_type="longrope", rope_theta=10000.0,
                                         short_factor=[1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 1.7, 2.0],
                                         long_factor=[1.0, 1.1, 1.4, 2.0, 3.5, 7.0, 14.0, 28.0])),
        generation_config=dict(bos_token_id=1, eos_token_id=[32007, 32001, 32000], pad_token_id=32000),
        template="microsoft-Phi-3.5-mini-instruct.jinja",
        tokenizer_patch="phi3",
        tokenizer_config=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=131072,
                              padding_side="left"),
        search=dict(top_k=1, do_sample=False),
    ),
}


# ------------------------------------------------------------------ tokenizer patches

def _added(token_id: int, content: str, special: bool = True) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _rename_added(tok: dict, tok_config: dict, names: dict[int, str]) -> None:
    for entry in tok["added_tokens"]:
        if entry["id"] in names:
            entry["content"] = names[entry["id"]]
    decoder = tok_config.get("added_tokens_decoder", {})
    for token_id, name in names.items():
        if str(token_id) in decoder:
            decoder[str(token_id)]["content"] = name


def patch_llama3_1(tok: dict, tok_config: dict) -> None:
    """The npm package's vocabulary is Llama 3's: give ids 128002..128255 their Llama 3.1
    names (<|finetune_right_pad_id|>, <|eom_id|>, <|python_tag|>, the reserved tokens
    renumbered), as in Llama 3.1's own tokenizer.json."""
    names = {128002: "<|reserved_special_token_0|>", 128003: "<|reserved_special_token_1|>",
             128004: "<|finetune_right_pad_id|>", 128005: "<|reserved_special_token_2|>",
             128008: "<|eom_id|>", 128010: "<|python_tag|>"}
    names.update({i: f"<|reserved_special_token_{i - 128008}|>" for i in range(128011, 128256)})
    _rename_added(tok, tok_config, names)


PHI3_ADDED = {32000: "<|endoftext|>", 32001: "<|assistant|>", 32002: "<|placeholder1|>",
              32003: "<|placeholder2|>", 32004: "<|placeholder3|>", 32005: "<|placeholder4|>",
              32006: "<|system|>", 32007: "<|end|>", 32008: "<|placeholder5|>", 32009: "<|placeholder6|>",
              32010: "<|user|>"}


def patch_phi3(tok: dict, tok_config: dict) -> None:
    """Phi-3's tokenizer is Llama 2's 32000 pieces plus its chat tokens 32000..32010."""
    tok["added_tokens"] += [_added(i, name) for i, name in PHI3_ADDED.items()]
    decoder = tok_config.setdefault("added_tokens_decoder", {})
    for i, name in PHI3_ADDED.items():
        decoder[str(i)] = {k: v for k, v in _added(i, name).items() if k != "id"}


TOKENIZER_PATCHES = {"llama3_1": patch_llama3_1, "phi3": patch_phi3}


def tokenizer_files(family: Family) -> tuple[dict, dict]:
    """The family's tokenizer.json and tokenizer_config.json, as a real checkpoint has them."""
    source = TOKENIZERS / family.tokenizer
    tok = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    if family.tokenizer_patch:
        TOKENIZER_PATCHES[family.tokenizer_patch](tok, tok_config)
    if family.template:
        tok_config["chat_template"] = (TEMPLATES / family.template).read_text(encoding="utf-8")
    tok_config.update(family.tokenizer_config)
    return tok, tok_config


def vocab_size(tok: dict) -> int:
    """Every id the tokenizer can produce: model vocabulary and added tokens."""
    vocab = tok["model"]["vocab"]
    return max([len(vocab)] + [t["id"] + 1 for t in tok.get("added_tokens", [])])


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
