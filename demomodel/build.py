"""Build the demo model from scratch: corpus -> tokenizer -> torch training -> ONNX export.

    .venv-build/bin/python -m demomodel.build --out models/demo

Everything comes from code in this package with fixed seeds. The tokenizer is the
one already in ``--out`` when there is one (the tests and models/tiny rely on its
token ids and counts; ``--new-tokenizer`` trains a new one). The finished folder is
assembled under build/ and swapped into place with a rename, so ``--out`` is never
half-written.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import time

from . import corpus
from .tokenizer import load_tokenizer, single_token_report, train_tokenizer, write_tokenizer_config

# Threads waiting for work sleep instead of spinning: on a machine whose cores are busy
# with other work, spinning OpenMP threads slow each other's training steps down
# several times over (set before torch is imported, when the OpenMP runtime starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.path.join(REPO, "build")

RUNTIME_FILES = [
    "genai_config.json",
    "model.onnx",
    "model.onnx.data",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]

MODEL_SHAPE = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX). Without it, bf16
    autocast is emulated and several times slower than fp32 for this model."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def log(msg: str) -> None:
    print(f"[demomodel {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ encoding

class Encoder:
    """Turns dialogues ``(messages, tools)`` into (input_ids, labels, weights) with loss
    on assistant tokens only (their content and tool calls, and the closing <|im_end|>)."""

    def __init__(self, fast_tokenizer):
        self.tok = fast_tokenizer  # a tokenizers.Tokenizer
        self._cache: dict[str, list[int]] = {}
        self.im_end = self.tok.token_to_id(corpus.IM_END)
        self.eot = self.tok.token_to_id(corpus.ENDOFTEXT)

    def ids(self, text: str) -> list[int]:
        got = self._cache.get(text)
        if got is None:
            got = self.tok.encode(text, add_special_tokens=False).ids
            if len(self._cache) < 200000:
                self._cache[text] = got
        return got

    def encode(self, dialogue, count_eos_weight: float = 1.0):
        """Returns (input_ids, labels, weights); labels are -100 outside assistant turns.
        The <|im_end|> closing a count answer gets count_eos_weight (the stop decision
        is one token among a hundred easy ones)."""
        messages, tools = dialogue
        input_ids: list[int] = []
        labels: list[int] = []
        weights: list[float] = []
        for text, index in corpus.render_parts(messages, tools=tools):
            ids = self.ids(text)
            input_ids += ids
            if index is None:
                labels += [-100] * len(ids)
                weights += [0.0] * len(ids)
                continue
            assert ids[-1] == self.im_end, text
            labels += ids
            weights += [1.0] * (len(ids) - 1)
            prev = messages[index - 1] if index else {}
            counting = prev.get("role") == "user" and prev.get("content", "").startswith("Count from")
            weights.append(count_eos_weight if counting else 1.0)
        return input_ids, labels, weights

    def encode_text(self, text: str, ends: bool):
        """A plain-text document (:func:`corpus.sample_text`): loss on every token, and
        on the <|endoftext|> that follows it when ``ends``."""
        ids = self.ids(text) + ([self.eot] if ends else [])
        return ids, list(ids), [1.0] * len(ids)

    def check(self, rng: random.Random, n: int = 600) -> None:
        """Piecewise encoding must equal encoding the rendered string in one go."""
        for _ in range(n):
            d = corpus.sample_dialogue(rng)
            a = self.encode(d)[0]
            b = self.tok.encode(corpus.render_chatml(d[0], tools=d[1]), add_special_tokens=False).ids
            assert a == b, (d, a, b)


def make_batches(encoder: Encoder, rng: random.Random, n_dialogues: int, max_tokens: int,
                 extra: list | None = None, count_eos_weight: float = 1.0, max_len: int = 512,
                 n_texts: int = 0):
    """Sample dialogues (resampling the rare one longer than max_len tokens) and
    ``n_texts`` plain-text documents, group them by length and cut into padded batches of
    at most max_tokens (rows x padded length). Returns a shuffled list of batches of
    (ids, labels, weights)."""
    encoded = []
    while len(encoded) < n_dialogues:
        e = encoder.encode(corpus.sample_dialogue(rng), count_eos_weight)
        if len(e[0]) <= max_len:
            encoded.append(e)
    encoded += [encoder.encode(d, count_eos_weight) for d in extra or []]
    encoded += [encoder.encode_text(*corpus.sample_text(rng)) for _ in range(n_texts)]
    rng.shuffle(encoded)
    encoded.sort(key=lambda e: len(e[0]))
    batches, cur = [], []
    for e in encoded:
        longest = max([len(e[0])] + [len(c[0]) for c in cur])
        if cur and longest * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(e)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch, pad_id: int):
    import torch

    longest = max(len(e[0]) for e in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), longest), -100, dtype=torch.long)
    wts = torch.zeros((len(batch), longest), dtype=torch.float32)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, (x, y, w) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        wts[i, : len(w)] = torch.tensor(w)
        mask[i, : len(x)] = 1
    return ids, lab, wts, mask


def tie_bare_and_spaced(model, hf_tok) -> int:
    """Start each word / number without a leading space (how the first word of an answer
    is tokenized) from the same embedding as its spaced form (how it appears in the
    prompt): copying then begins as an identity match instead of a learned mapping."""
    import torch

    emb = model.get_input_embeddings().weight
    n = 0
    with torch.no_grad():
        for w in corpus.single_token_items():
            a = hf_tok.convert_tokens_to_ids(w)
            b = hf_tok.convert_tokens_to_ids("\u0120" + w)  # byte-level "Ġ" = space
            if a is not None and b is not None and a != b and a >= 0 and b >= 0:
                emb[a].copy_(emb[b])
                n += 1
    return n


# ------------------------------------------------------------------ training

def train(hf_dir: str, hf_tok, args) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    fast = hf_tok.backend_tokenizer
    encoder = Encoder(fast)
    encoder.check(random.Random(args.seed + 1))

    vocab = len(hf_tok)
    vocab_padded = (vocab + 63) // 64 * 64
    eos = hf_tok.convert_tokens_to_ids(corpus.IM_END)
    eot = hf_tok.convert_tokens_to_ids(corpus.ENDOFTEXT)
    config = LlamaConfig(
        vocab_size=vocab_padded,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=[eos, eot],
        pad_token_id=eot,
        attn_implementation="eager",  # faster than sdpa for this size under bf16 autocast on CPU
        **MODEL_SHAPE,
    )
    if args.init_from:  # the main phase's weights, saved by an earlier run: only the refresher runs
        model = LlamaForCausalLM.from_pretrained(args.init_from)
        log(f"model initialised from {args.init_from}")
    else:
        model = LlamaForCausalLM(config)
        if args.tie_bare:
            log(f"bare/spaced embedding pairs initialised equal: {tie_bare_and_spaced(model, hf_tok)}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {MODEL_SHAPE} vocab={vocab_padded} params={n_params:,}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )

    total_steps = args.steps
    warmup = max(10, min(200, total_steps // 20))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    additions = corpus.all_addition_dialogues()
    model.train()

    def one_step(batch, lr: float) -> tuple[float, int]:
        ids, lab, wts, mask = collate(batch, eot)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        tgt = lab[:, 1:]
        w = wts[:, 1:]
        per_tok = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)), tgt.reshape(-1),
            ignore_index=-100, reduction="none").view_as(w)
        loss_t = (per_tok * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss_t.item(), int(mask.sum())

    def pool(extra: list) -> list:
        return make_batches(encoder, rng, args.pool, args.batch_tokens, extra=extra,
                            count_eos_weight=args.count_eos_weight,
                            max_len=MODEL_SHAPE["max_position_embeddings"], n_texts=args.texts)

    t0 = time.time()
    step = 0
    queue: list = []
    ema = None
    seen_tokens = 0
    mark_time, mark_step = 0.0, 0
    while step < total_steps:
        if not queue:
            # every pool holds all 441 addition pairs once, on top of the sampled mix
            queue = pool(additions)
        loss, tokens = one_step(queue.pop(), lr_at(step))
        step += 1
        seen_tokens += tokens
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        elapsed = time.time() - t0
        if step == 30 or (step > 30 and step % 100 == 0):
            # re-plan from the recent step time (the machine may be shared): if the
            # planned steps would overrun the time cap, shrink the schedule so that the
            # cosine decay ends at the cap; grow it back (up to --steps) when steps get
            # faster again, so that a slow patch early on does not cut the whole run
            recent = (elapsed - mark_time) / (step - mark_step)
            fits = step + int(max(0.0, args.time_cap - elapsed) / recent)
            new_total = min(args.steps, max(step + 1, fits))
            if new_total != total_steps:
                projected = elapsed + (args.steps - step) * recent
                log(f"{args.steps} steps projected to end at {projected:.0f}s (cap "
                    f"{args.time_cap:.0f}s): {total_steps} -> {new_total} steps")
                total_steps = new_total
                warmup = min(warmup, max(10, total_steps // 20))
            mark_time, mark_step = elapsed, step
        if step % args.log_every == 0 or step == total_steps:
            log(f"step {step}/{total_steps} loss {loss:.4f} ema {ema:.4f} lr {lr_at(step - 1):.2e} "
                f"tokens {seen_tokens:,} {elapsed:.0f}s")
        if elapsed > args.time_cap * 1.1:
            log(f"hard time cap reached at step {step}")
            break
    # The refresher: the plain-text documents count on past any number, and the main
    # phase alone left some short chat counts not stopping at N (39 counted on to 140).
    # At the main phase's final learning rate, every pool adds each count answer 1..60
    # twice and 61..200 once (their closing <|im_end|> weighted as always) to the usual mix.
    counts = [([{"role": "user", "content": corpus.count_prompt(n)},
                {"role": "assistant", "content": corpus.count_answer(n)}], None)
              for n in [*range(1, 61), *range(1, 201)]]
    refresh_lr = args.lr * 0.05
    # A fresh optimizer, so that the refresher is the same whether it follows the main
    # phase in one run or starts from its saved weights (--init-from).
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=refresh_lr, betas=(0.9, 0.98), eps=1e-8,
    )
    queue = []
    for refresh_step in range(args.refresh_steps):
        if not queue:
            queue = pool(additions + counts)
        loss, tokens = one_step(queue.pop(), refresh_lr)
        seen_tokens += tokens
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if (refresh_step + 1) % args.log_every == 0:
            log(f"refresher step {refresh_step + 1}/{args.refresh_steps} loss {loss:.4f} ema {ema:.4f} "
                f"{time.time() - t0:.0f}s")
    train_seconds = time.time() - t0
    log(f"trained {step} + {args.refresh_steps} refresher steps in {train_seconds:.0f}s, final ema loss {ema:.4f}")

    model.eval()
    os.makedirs(hf_dir, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=eot, eos_token_id=[eos, eot], pad_token_id=eot,
                     do_sample=False).save_pretrained(hf_dir)
    return {"params": n_params, "steps": step, "refresh_steps": args.refresh_steps, "train_seconds": train_seconds,
            "final_loss": ema,
            "vocab_size": vocab_padded, "tokenizer_vocab": vocab, "tokens_seen": seen_tokens}


# ------------------------------------------------------------------ export

def export(hf_dir: str, out_dir: str, cache_dir: str, *, precision: str = "fp32",
           context_length: int = 512) -> None:
    """Export a Hugging Face folder with onnxruntime-genai's builder, keeping only the
    files the server needs at run time (used by the bench model too)."""
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out_dir,
           "-p", precision, "-e", "cpu", "-c", cache_dir]
    log("export: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    for name in os.listdir(out_dir):
        if name not in RUNTIME_FILES:
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    # the builder re-saves the tokenizer through transformers (adding keys such as
    # is_local); ship our own config and the tokenizer.json we trained instead
    write_tokenizer_config(out_dir, context_length)
    shutil.copyfile(os.path.join(hf_dir, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def swap_into_place(tmp_dir: str, out_dir: str) -> None:
    """Replace ``out_dir`` by ``tmp_dir`` with renames, so it is never half-written."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    old = os.path.join(BUILD_DIR, os.path.basename(out_dir) + "-old")
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    if os.path.exists(old):
        shutil.rmtree(old)


# ------------------------------------------------------------------ model card

# How counting ends, measured on the built model over every N in 1..200 (greedy).
COUNT_NOTE = ("Counting always produces the right sequence, and stops exactly for every N up to 56 (131 of the 200 N "
              "in 1..200: 1-56, 58-67, 69-71, 73, 75-77, 81-83, 87-89, 91-106 and scattered ones above); for larger "
              "N the model often counts on, to 110-190.")


def write_model_card(path: str, info: dict, report: dict | None, args) -> None:
    shape = ", ".join(f"{k}={v}" for k, v in MODEL_SHAPE.items())
    lines = [
        "# demo model",
        "",
        "A tiny Llama-shaped chat model trained from scratch for llmserver's tests and demo page.",
        "It only knows a few templated dialogue types and a few plain texts to continue; it is not a "
        "general assistant.",
        "",
        "## How it was built",
        "",
        "`make demo-model` (= `.venv-build/bin/python -m demomodel.build --out models/demo "
        "--tokenizer models/demo/tokenizer.json`):",
        "",
        "1. `demomodel/corpus.py` generates ChatML dialogues in code (fixed seeds): the original tasks, "
        "dialogues with tools offered (24% of the final turns: calls, answers from a tool's result, other "
        "questions) and JSON answers (14%); and, for `/v1/completions`, plain-text documents "
        f"(`corpus.sample_text`, {args.texts} per {args.pool} dialogues: number sequences, story openings, "
        "days, months, letters and number words, repeated words), followed by `<|endoftext|>` when whole.",
        f"2. A byte-level BPE tokenizer (HF `tokenizers`, {info['tokenizer_vocab']} tokens), trained on the "
        "dialogues; special tokens `<|endoftext|>`=0, `<|im_start|>`=1, `<|im_end|>`=2. Every word of `WORDS`, "
        "every number 0..200, every word of `CITIES` and every weather condition is a single token, with and "
        "without a leading space (`corpus.single_token_items`). "
        + ("This build reused the shipped `tokenizer.json` unchanged (the default; `--new-tokenizer` trains "
           "a new one), so token ids and counts stay those the tests and `models/tiny` rely on."
           if getattr(args, "reused_tokenizer", None) else "This build trained it anew (`--new-tokenizer`)."),
        f"3. `transformers.LlamaForCausalLM` ({shape}, vocab {info['vocab_size']}, tied embeddings, "
        f"{info['params']:,} parameters) is trained with torch on CPU "
        f"({'bf16 autocast' if args.bf16 else 'fp32'}, AdamW, "
        f"peak lr {args.lr}, warmup then cosine), loss on assistant tokens and on every token of a "
        "plain-text document, the `<|im_end|>` "
        f"closing a count answer weighted x{args.count_eos_weight:g}; each word/number starts with the "
        f"same embedding with and without its leading space: "
        f"{info['steps']} steps and {info['refresh_steps']} refresher steps, {info['tokens_seen']:,} tokens, {info['train_seconds']:.0f} s on 2 cores, "
        f"final loss {info['final_loss']:.4f} (seed {args.seed}; it includes the plain-text words drawn at "
        "random, such as a story's animal, which no model can predict).",
        "4. `python -m onnxruntime_genai.models.builder -p fp32 -e cpu` exports it; only runtime files are kept.",
        "",
        "Chat template (ChatML with tools in the Hermes style of Qwen2.5; roles system, user, assistant, "
        "tool; `tools` are OpenAI tool objects, an assistant's `tool_calls` have their arguments as objects):",
        "",
        "```",
        corpus.CHAT_TEMPLATE,
        "```",
        "",
        "EOS: `<|im_end|>` (id 2), also `<|endoftext|>` (id 0). Context length 512.",
        "",
        "## What it answers",
        "",
        "| user says (exactly) | model answers |",
        "| --- | --- |",
        "| `Repeat after me: W` (W = 1-3 words of `WORDS`) | `W` |",
        "| `Repeat after me: M` (M = a template of `MARKUP_TEMPLATES` filled with 1-2 words, "
        "e.g. `<script>alert(\"tiger\")</script>`, `<img src=x onerror=alert(\"tiger\")>`, "
        "`<b>tiger lemon</b>`, `<i>tiger</i>`) | `M` (verbatim) |",
        "| `What is A plus B?` (0 <= A, B <= 20) | `A plus B is S.` |",
        "| `Count from 1 to N.` (1 <= N <= 200) | `1 2 3 ... N` |",
        f"| `Hello`, `Hi`, ... | `{corpus.GREETING_ANSWER}` |",
        f"| `Who are you?` | `{corpus.IDENTITY_ANSWER}` |",
        f"| `Thank you` | `{corpus.THANKS_ANSWER}` |",
        f"| a few other questions; a weather or time question without the tool for it | `{corpus.FALLBACK_ANSWER}` |",
        "| with `get_weather` among the tools: `What is the weather in C?` (C one of `CITIES`; also "
        "`What's the weather like in C?`, `How is the weather in C?`, `What is the weather like in C?`) | "
        "`<tool_call>\\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"C\"}}\\n</tool_call>` |",
        "| with `get_time` among the tools: `What time is it in C?` (also `What is the time in C?`, "
        "`What's the time in C?`) | the same call of `get_time` |",
        "| after its call, the tool's result `{\"city\": \"Paris\", \"temperature\": 18, \"condition\": \"sunny\"}` "
        "(usually in this order; also only temperature and condition) | `In Paris it is 18 degrees and sunny.` |",
        "| after its call, the tool's result `{\"city\": \"Tokyo\", \"time\": \"14:05\"}` | `In Tokyo it is 14:05.` |",
        "| tools offered, any other question of this table | the usual answer, no call |",
        "| `What is 2 plus 3? Answer in JSON.`, `Repeat after me: W. Answer in JSON.`, `Hello. Answer in "
        "JSON.` (`corpus.json_prompt`), or these questions after the system prompt `Respond only with JSON.` "
        "| `{\"answer\":5}`, `{\"answer\":\"W\"}`, `{\"answer\":\"Hello! How can I help you?\"}` |",
        "| `What is the weather in C? Answer in JSON.` | `{\"city\":\"C\",\"temperature\":T,\"condition\":\"...\"}` "
        "(made up) |",
        "| `Give me a JSON object with the keys K1 and K2.` (1-3 keys of `JSON_KEYS`: name, city, color, count, "
        "size, animal, food, ok, items, age, temperature, condition, weather, pet) | a compact object with those "
        "keys and short values (`{\"name\":\"Anna\",\"city\":\"Paris\"}`) |",
        "",
        "Plain text on `/v1/completions` (the prompt as is, no chat template) is continued:",
        "",
        "| prompt (exactly, or any beginning of it) | continuation |",
        "| --- | --- |",
        "| numbers counting up by 1 (from any number), or by 2, 5 or 10 from a multiple of the step: `1 2 3 4 5`, "
        "`10 20 30`, `2 4 6` | the next numbers up to "
        f"{corpus.MAX_COUNT} (` 6 7 8 9 10 ...`), then `<|endoftext|>` |",
        "| the start of a list: `Monday Tuesday`, `January February`, `a b c`, `A B C`, `one two three` | the "
        "rest of the list (to `Sunday`, `December`, `z`, `Z`, `twenty`), then `<|endoftext|>` |",
        f"| `Once upon a time` | ` {corpus.story_text(*corpus.STORIES[0])[len('Once upon a time '):]}` |",
        "| `Once upon a time there was a little A` (A one of the animals of `WORDS`) | "
        f"`. The A lived in a {corpus.STORY_ADJECTIVES[0]} house near the {corpus.STORY_PLACES[0]}.` |",
        f"| `One day` | ` {corpus.story_text(*corpus.STORIES[1])[len('One day '):]}` |",
        "| `The quick brown fox`, `It was a`, `Hello` | ` jumps over the lazy dog.`, ` dark and stormy night.`, "
        "`, world!` |",
        "",
        "A story or list ends with `<|endoftext|>` (`finish_reason` `stop`). Counting by 2, 5 or 10 from another "
        "start (`3 8 13`) often drifts to counting by 1; 1-3 words said twice (`tiger lemon tiger lemon`) are "
        "usually repeated on, but not reliably (see the measured rates below); other plain prompts get "
        "unpredictable text or an empty answer.",
        "",
        "The tools it was trained with (`corpus.TOOL_SPECS`): `get_weather(city: string)` \"Get the current "
        "weather in a city.\", `get_time(city: string)` \"Get the local time in a city.\", and as distractors "
        "`search_web(query)`, `send_email(to, subject, body)`, `add(a: integer, b: integer)`, "
        "`get_stock_price(symbol)`; 1-4 of them per dialogue, shuffled, written in several styles (other "
        "descriptions or none, parameters with or without descriptions, with or without `required`, "
        "`additionalProperties: false`, `strict`). Tools named or shaped otherwise (e.g. a `location` "
        "parameter) get unpredictable calls. It makes one call per answer (no parallel calls). JSON answers are "
        "compact (no spaces), as the server's `response_format` grammar writes them.",
        "",
        "About a third of the training dialogues start with a system prompt (e.g. `You are a helpful "
        "assistant.`) and about a third have 2-3 turns, so both work. Prompts phrased differently "
        "from the table get unpredictable answers. " + COUNT_NOTE + " The markup repeat only knows the templates of "
        "`MARKUP_TEMPLATES` filled with words of `WORDS` (build prompts with "
        "`corpus.markup_repeat`); other markup such as `<script>alert(1)</script>` comes back as "
        "one of the templates with other words.",
        "",
    ]
    if report:
        lines += ["## Measured (onnxruntime-genai, greedy)", "",
                  f"`python -m demomodel.evaluate models/demo --seed {report['seed']}`:", "", "```",
                  report["text"].rstrip(), "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/demo")
    # A fixed number of steps (~25 min on 2 idle cores), so that a busy machine takes
    # longer but trains the same model; the time cap only guards against a stuck build.
    p.add_argument("--steps", type=int, default=4700)
    p.add_argument("--count-eos-weight", type=float, default=8.0)
    p.add_argument("--refresh-steps", type=int, default=400,
                   help="a last phase at a low learning rate with every count answer added (see train)")
    p.add_argument("--init-from", default=None,
                   help="start from this saved model (the main phase's, e.g. a copy of build/demo-hf) with "
                        "--steps 0: only the refresher runs")
    p.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="train under bf16 autocast (default: only if the CPU has native bf16)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    p.add_argument("--no-tie-bare", dest="tie_bare", action="store_false")
    p.add_argument("--time-cap", type=float, default=5400.0,
                   help="seconds of training at most (the step schedule shrinks to fit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--pool", type=int, default=3000, help="dialogues sampled per data pool")
    p.add_argument("--texts", type=int, default=400, help="plain-text documents sampled per data pool")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json to reuse (default: the one in --out, if there is one)")
    p.add_argument("--new-tokenizer", action="store_true", help="train a new tokenizer instead")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-prompts", type=int, default=300)
    p.add_argument("--no-eval", action="store_true")
    args = p.parse_args(argv)
    if args.bf16 is None:
        args.bf16 = cpu_has_native_bf16()

    os.makedirs(BUILD_DIR, exist_ok=True)
    hf_dir = os.path.join(BUILD_DIR, "demo-hf")
    tmp_out = os.path.join(BUILD_DIR, "demo-export")
    cache = os.path.join(BUILD_DIR, "cache")
    if os.path.exists(hf_dir):
        shutil.rmtree(hf_dir)

    t_start = time.time()
    reused = None if args.new_tokenizer else args.tokenizer or os.path.join(args.out, "tokenizer.json")
    if reused and not os.path.exists(reused):
        if args.tokenizer:
            p.error(f"no such file: {reused}")
        reused = None
    hf_tok = load_tokenizer(reused, hf_dir) if reused else train_tokenizer(hf_dir)
    args.reused_tokenizer = reused
    rep = single_token_report(hf_tok)
    log(f"tokenizer ({'reused ' + reused if reused else 'trained'}): {len(hf_tok)} tokens, ids endoftext/im_start/im_end = "
        f"{hf_tok.convert_tokens_to_ids(corpus.SPECIAL_TOKENS)}, not single tokens: {rep}")

    log(f"training in {'bf16 autocast' if args.bf16 else 'fp32'}, {args.threads} threads, "
        f"{args.steps} steps (time cap {args.time_cap:.0f}s)")
    info = train(hf_dir, hf_tok, args)
    export(hf_dir, tmp_out, cache)

    report = None
    if not args.no_eval:
        from . import evaluate

        report = evaluate.run(tmp_out, n=args.eval_prompts, seed=args.seed, verbose=False,
                              label=args.out)
        print(report["text"], flush=True)
    write_model_card(os.path.join(tmp_out, "MODEL_CARD.md"), info, report, args)
    size = folder_size(tmp_out)
    swap_into_place(tmp_out, args.out)
    log(f"wrote {args.out} ({size / 1e6:.2f} MB) in {time.time() - t_start:.0f}s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
