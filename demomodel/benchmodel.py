"""Build the benchmark model: a ~360M-parameter Llama shape with random weights, int4 CPU.

    .venv-build/bin/python -m demomodel.benchmodel --out models/bench [--force]

``--shape tiny`` builds the same kind of model at 0.2M parameters (fp32): the small
second model the multi-model tests serve beside the demo model (models/tiny, shipped).

It talks nonsense; it exists to measure throughput with a realistic amount of
compute per token. It reuses models/demo's tokenizer so the server can tokenize
and detokenize. The LM head rows of the special tokens (and of byte tokens that
are not valid UTF-8 alone) are zeroed while the others give large logits, so the
model practically never emits EOS and every request runs to its max_tokens:
useful for benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from . import corpus
from .build import BUILD_DIR, export, folder_size, swap_into_place
from .tokenizer import write_tokenizer_config


SHAPES = {
    "bench": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
}
PRECISION = {"bench": "int4", "tiny": "fp32"}


def log(msg: str) -> None:
    print(f"[benchmodel {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_hf(hf_dir: str, tokenizer_dir: str, seed: int, shape: dict) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab = len(tok["model"]["vocab"])
    vocab = max([vocab] + [t["id"] + 1 for t in tok.get("added_tokens", [])])
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    eos, eot, ims = ids[corpus.IM_END], ids[corpus.ENDOFTEXT], ids[corpus.IM_START]

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eot,
        eos_token_id=[eos, eot],
        pad_token_id=eot,
        **shape,
    )
    model = LlamaForCausalLM(config)
    from tokenizers import Tokenizer

    hf_tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    # tokens that are not valid UTF-8 on their own (stray bytes of a multi-byte character):
    # onnxruntime-genai's decode() drops everything after one and its stream decoder
    # swallows the following bytes, which would garble the nonsense text
    banned = {eos, eot, ims} | {i for i in range(vocab) if "\ufffd" in hf_tok.decode([i])}
    with torch.no_grad():
        # larger logits (std ~5): sampling stays close to greedy and the zeroed rows below
        # (logit exactly 0) practically never win, with or without sampling
        model.lm_head.weight.normal_(0.0, 0.15)
        for t in banned:
            model.lm_head.weight[t].zero_()
    log(f"{len(banned)} tokens never generated (EOS, special tokens, stray UTF-8 bytes)")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"shape {shape} vocab={vocab}: {n_params:,} parameters ({n_params / 1e6:.1f}M)")
    os.makedirs(hf_dir, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=eot, eos_token_id=[eos, eot], pad_token_id=eot,
                     do_sample=False).save_pretrained(hf_dir)
    shutil.copyfile(os.path.join(tokenizer_dir, "tokenizer.json"), os.path.join(hf_dir, "tokenizer.json"))
    write_tokenizer_config(hf_dir, shape["max_position_embeddings"])
    return n_params


def check(path: str) -> None:
    import onnxruntime_genai as og

    model = og.Model(path)
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(json.dumps([{"role": "user", "content": "Hello"}]),
                                     add_generation_prompt=True)
    ids = tok.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 64)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    t0 = time.time()
    while not gen.is_done() and len(out) < 64:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    dt = time.time() - t0
    log(f"og check: {len(out)} tokens in {dt:.2f}s ({len(out) / dt:.1f} tok/s, batch 1): "
        f"{tok.decode(out)[:80]!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/bench")
    p.add_argument("--tokenizer", default="models/demo", help="folder with tokenizer.json to reuse")
    p.add_argument("--force", action="store_true", help="rebuild even if --out already holds a model")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--keep-hf", action="store_true", help="keep the HF checkpoint under build/")
    p.add_argument("--shape", choices=SHAPES, default="bench")
    args = p.parse_args(argv)

    out = os.path.abspath(args.out)
    if os.path.exists(os.path.join(out, "genai_config.json")) and not args.force:
        log(f"{args.out} already built (use --force to rebuild)")
        return 0

    t0 = time.time()
    hf_dir = os.path.join(BUILD_DIR, "bench-hf")
    tmp_out = os.path.join(BUILD_DIR, "bench-export")
    cache = os.path.join(BUILD_DIR, "cache")
    for d in (hf_dir, tmp_out):
        if os.path.exists(d):
            shutil.rmtree(d)
    shape = SHAPES[args.shape]
    make_hf(hf_dir, args.tokenizer, args.seed, shape)

    export(hf_dir, tmp_out, cache, precision=PRECISION[args.shape], context_length=shape["max_position_embeddings"])
    check(tmp_out)
    swap_into_place(tmp_out, out)
    if not args.keep_hf:
        shutil.rmtree(hf_dir)
    size = folder_size(out)
    log(f"wrote {args.out} ({size / 1e6:.0f} MB) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
