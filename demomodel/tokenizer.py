"""Train the demo model's byte-level BPE tokenizer (build venv only)."""

from __future__ import annotations

import json
import os
import shutil

from . import corpus

VOCAB_SIZE = 2048


def train_tokenizer(out_dir: str, vocab_size: int = VOCAB_SIZE, seed: int = 1234):
    """Train a byte-level BPE, save it as a Hugging Face tokenizer folder in out_dir
    and return the ``transformers`` tokenizer object."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(corpus.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.tokenizer_training_text(seed=seed), trainer=trainer)
    return _save(tok, out_dir)


def load_tokenizer(path: str, out_dir: str):
    """The tokenizer of an existing ``tokenizer.json`` (the shipped model's, so that a
    retrained model keeps its token ids and counts), saved as a Hugging Face tokenizer
    folder in out_dir with that file copied as is; returns the ``transformers`` object."""
    from tokenizers import Tokenizer

    hf_tok = _save(Tokenizer.from_file(path), out_dir)
    shutil.copyfile(path, os.path.join(out_dir, "tokenizer.json"))
    return hf_tok


def _save(tok, out_dir: str):
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=corpus.IM_END,
        pad_token=corpus.ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    hf_tok.chat_template = corpus.CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    write_tokenizer_config(out_dir)
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    return hf_tok


def tokenizer_config(model_max_length: int = 512) -> dict:
    """The tokenizer_config.json shipped with the model (written by us, not by
    transformers, so that it is the same whatever transformers version ran)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": corpus.IM_END,
        "pad_token": corpus.ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": corpus.CHAT_TEMPLATE,
    }


def write_tokenizer_config(out_dir: str, model_max_length: int = 512) -> None:
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(model_max_length), f, indent=2, ensure_ascii=False)
        f.write("\n")


def single_token_report(hf_tok) -> dict:
    """Which words / numbers (:func:`corpus.single_token_items`) are not a single token
    (with and without a leading space)."""
    bad_space, bad_bare = [], []
    for w in corpus.single_token_items():
        if len(hf_tok.encode(" " + w, add_special_tokens=False)) != 1:
            bad_space.append(w)
        if len(hf_tok.encode(w, add_special_tokens=False)) != 1:
            bad_bare.append(w)
    return {"multi_token_after_space": bad_space, "multi_token_bare": bad_bare}
