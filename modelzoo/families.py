"""The zoo's model families: each one's architecture, real tokenizer and chat template, and
the tokenizer files a real checkpoint of it has (modelzoo/build.py makes the models,
modelzoo/trained.py trains some of them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

ZOO = Path(__file__).resolve().parent.parent / ".zoo"
TOKENIZERS = ZOO / "tokenizers"
TEMPLATES = ZOO / "templates"


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
