"""The zoo's trained models: tiny models trained on real tokenizers and chat templates to
write their family's formats (modelzoo/trained_corpus.py is what they learn).

    .venv-build/bin/python -m modelzoo.trained [--only NAME] [--steps N]     (make zoo-train)

- ``qwen3-trained``: Qwen3 architecture, the real Qwen3 tokenizer and template; thinks
  first (``<think>\\n...\\n</think>\\n\\n``), calls tools in Hermes form
  (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``) and answers from a
  tool's result.
- ``llama3-trained``: Llama architecture, the real Llama 3.1 tokenizer and template;
  calls tools as ``{"name": ..., "parameters": {...}}`` and answers from the result.

A real vocabulary (Qwen3 151,669 ids, Llama 3 128,256) makes a full softmax too slow to
train on a CPU, and the corpus uses a thousand of those ids. The model is therefore
trained on a compact vocabulary: the set U of ids the corpus uses, plus one shared
"other" row standing for every id outside U, in the input embedding and in the LM head
(untied). In the loss the "other" logit gets ``+ log(|V \\ U|)``: the distribution is
exactly the full-vocabulary softmax in which every id outside U has the "other" rows.
Expanding the compact weights to the full vocabulary (:func:`expand`) makes that model.

Training writes the compact weights to ``modelzoo/trained/<name>.safetensors`` (committed,
a few MB, with the ids of U as the tensor ``vocab_ids``) and a summary beside it;
``make model-zoo`` (modelzoo/build.py) expands them and exports them with
onnxruntime-genai's builder into ``.zoo/models/<name>/`` without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep rather than spin (set before torch starts its runtime): the
# machine's cores are shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from modelzoo import trained_corpus as corpus  # noqa: E402
from modelzoo.families import FAMILIES, tokenizer_files  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent / "trained"

# Smaller than the demo model: 3 layers, 128 wide, 4 query heads of 32, 2 KV heads.
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)


@dataclasses.dataclass(frozen=True)
class Trained:
    family: str                 # modelzoo.families.FAMILIES key: architecture, tokenizer, template, special ids
    end: str                    # the token that ends an assistant turn (the template's)
    thinking: bool = False      # the template's generation prompt leaves thinking to the model
    generation_config: dict = dataclasses.field(default_factory=dict)


TRAINED: dict[str, Trained] = {
    # eos as Qwen3's own generation_config; greedy unless a request asks to sample
    "qwen3-trained": Trained(family="qwen3", end="<|im_end|>", thinking=True,
                             generation_config=dict(bos_token_id=151643, pad_token_id=151643,
                                                    eos_token_id=[151645, 151643], do_sample=False)),
    "llama3-trained": Trained(family="llama3", end="<|eot_id|>",
                              generation_config=dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                                                     do_sample=False)),
}


def weights_path(name: str) -> Path:
    return WEIGHTS / f"{name}.safetensors"


def log(msg: str) -> None:
    print(f"[zoo-train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ rendering

def hf_tokenizer(name: str, folder: Path):
    """The family's real tokenizer (with its template) as transformers loads it."""
    from transformers import AutoTokenizer

    tok, tok_config = tokenizer_files(FAMILIES[TRAINED[name].family])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(folder))


class Renderer:
    """Example -> (prompt ids, target ids): the prompt the template renders before the last
    assistant message and the text that message is rendered as, up to its end token."""

    def __init__(self, name: str, tokenizer):
        self.spec = TRAINED[name]
        self.tok = tokenizer

    def texts(self, messages: list[dict], tools, thinking: bool = True) -> tuple[str, str]:
        if not (self.spec.thinking and thinking):
            messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
        kwargs = {"enable_thinking": thinking} if self.spec.thinking else {}
        prompt = self.tok.apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True,
                                              tokenize=False, **kwargs)
        full = self.tok.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
        assert full.startswith(prompt), (prompt, full)
        target = full[len(prompt):]
        return prompt, target[: target.index(self.spec.end) + len(self.spec.end)]

    def encode(self, messages, tools, thinking: bool = True) -> tuple[list[int], list[int]]:
        prompt, target = self.texts(messages, tools, thinking)
        return (self.tok.encode(prompt, add_special_tokens=False),
                self.tok.encode(target, add_special_tokens=False))


def examples(renderer: Renderer, rng: random.Random, n: int) -> list[tuple[list[int], list[int]]]:
    """n encoded examples; with a thinking template, a fifth of them with thinking off."""
    out = []
    while len(out) < n:
        for messages, tools in corpus.sample(rng):
            thinking = not renderer.spec.thinking or rng.random() >= 0.2
            out.append(renderer.encode(messages, tools, thinking))
    return out


def held_out(renderer: Renderer) -> list[tuple[list[int], list[int]]]:
    """Round trips about cities never asked about in training, and direct answers."""
    rng = random.Random(7)
    out = []
    for i in range(12):
        for messages, tools in corpus.round_trip(rng, cities=corpus.HELD_OUT_CITIES):
            out.append(renderer.encode(messages, tools))
    for question, answer in [("Hello!", corpus.GREETING_ANSWER), ("Who are you?", corpus.WHO_ANSWER)]:
        out.append(renderer.encode([{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer,
                                     "reasoning_content": "The user greets me." if question == "Hello!"
                                     else "The user asks who I am."}], None))
    return out


# ------------------------------------------------------------------ model

def hf_config(name: str, vocab_size: int):
    from transformers import AutoConfig

    family = FAMILIES[TRAINED[name].family]
    model_type = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama"}[family.architecture]
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, max_position_embeddings=family.context_length,
                                tie_word_embeddings=False, architectures=[family.architecture],
                                **{**SHAPE, **family.config})


class Compact:
    """Maps full-vocabulary ids to the compact vocabulary: U's ids in order, then "other"."""

    def __init__(self, vocab_ids: list[int], full_size: int):
        self.vocab_ids = vocab_ids
        self.other = len(vocab_ids)
        self.index = {token: i for i, token in enumerate(vocab_ids)}
        self.log_others = math.log(full_size - len(vocab_ids))

    def __call__(self, ids: list[int]) -> list[int]:
        return [self.index.get(t, self.other) for t in ids]

    def adjust(self, logits):
        """The "other" logit stands for |V \\ U| ids with that logit each."""
        logits = logits.clone()
        logits[..., self.other] += self.log_others
        return logits


def greedy(model, compact: Compact, prompt: list[int], limit: int) -> list[int]:
    """Greedy continuation of the compact model, in compact ids, up to ``limit`` tokens."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        generated = []
        while len(generated) < limit:
            token = int(out.logits[0, -1].argmax())  # the shared rows' single id stands for all of theirs
            generated.append(token)
            if token == compact.other:
                break
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return generated


def exact(model, compact: Compact, cases, end_id: int) -> int:
    """How many held-out targets greedy decoding writes exactly (stopping at the end token)."""
    n = 0
    for prompt, target in cases:
        got = greedy(model, compact, compact(prompt), len(target))
        n += got == compact(target)
    return n


def train(name: str, steps: int, seed: int, batch_tokens: int, lr: float) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = hf_tokenizer(name, Path(tmp) / "tok")
    renderer = Renderer(name, tok)
    full_size = len(tok)
    pool = examples(renderer, rng, 6000)
    cases = held_out(renderer)
    used = sorted({t for p, c in pool + cases for t in p + c})
    compact = Compact(used, full_size)
    log(f"{name}: {len(pool)} examples, vocabulary {len(used)} of {full_size} ids, "
        f"mean length {sum(len(p) + len(c) for p, c in pool) / len(pool):.0f}")
    model = AutoModelForCausalLM.from_config(hf_config(name, len(used) + 1))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n_params:,} parameters (compact)")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warmup = 30

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (steps - warmup)))))

    def batches():
        order = sorted(range(len(pool)), key=lambda i: len(pool[i][0]) + len(pool[i][1]) + rng.random())
        out, cur = [], []
        for i in order:
            length = len(pool[i][0]) + len(pool[i][1])
            if cur and length * (len(cur) + 1) > batch_tokens:
                out.append(cur)
                cur = []
            cur.append(i)
        out.append(cur)
        rng.shuffle(out)
        return out

    end_id = compact(tok.encode(TRAINED[name].end, add_special_tokens=False))[0]
    t0 = time.time()
    queue, ema, step = [], None, 0
    history = []
    model.train()
    while step < steps:
        if not queue:
            queue = batches()
        rows = [pool[i] for i in queue.pop()]
        longest = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), longest), compact.other, dtype=torch.long)
        labels = torch.full((len(rows), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (p, c) in enumerate(rows):
            seq = compact(p + c)
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, len(p): len(seq)] = torch.tensor(compact(c))
            mask[r, : len(seq)] = 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = compact.adjust(model(input_ids=ids, attention_mask=mask).logits)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 50 == 0 or step == steps:
            log(f"{name}: step {step}/{steps} loss {loss.item():.4f} ema {ema:.4f} {time.time() - t0:.0f}s")
        if step % 200 == 0 or step == steps:
            model.eval()
            got = exact(model, compact, cases, end_id)
            model.train()
            history.append((step, got))
            log(f"{name}: step {step}: {got}/{len(cases)} held-out answers exact")
    seconds = time.time() - t0
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state["vocab_ids"] = torch.tensor(used, dtype=torch.int64)
    WEIGHTS.mkdir(exist_ok=True)
    save_file(state, str(weights_path(name)), metadata={"full_vocab_size": str(full_size)})
    summary = {"name": name, "shape": SHAPE, "steps": steps, "seed": seed, "batch_tokens": batch_tokens, "lr": lr,
               "train_seconds": round(seconds), "final_ema_loss": round(ema, 5), "compact_vocab": len(used),
               "compact_parameters": n_params, "held_out_exact": history, "held_out_cases": len(cases)}
    (WEIGHTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"{name}: trained in {seconds:.0f}s; {weights_path(name)}")
    return summary


# ------------------------------------------------------------------ expansion

def expand(name: str, hf_dir: Path) -> dict:
    """Write the Hugging Face folder of ``name`` (full vocabulary, tokenizer, template,
    generation_config) from its compact weights."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, GenerationConfig

    spec = TRAINED[name]
    family = FAMILIES[spec.family]
    tok, tok_config = tokenizer_files(family)
    hf_dir.mkdir(parents=True)
    (hf_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2), encoding="utf-8")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False, indent=2),
                                                 encoding="utf-8")
    with safe_open(str(weights_path(name)), framework="pt") as f:
        full_size = int(f.metadata()["full_vocab_size"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    vocab_ids = state.pop("vocab_ids")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = state[key]
        full = rows[-1].repeat(full_size, 1)  # every id outside U has the shared rows
        full[vocab_ids] = rows[:-1]
        state[key] = full
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(name, full_size))
    model.load_state_dict(state, strict=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    GenerationConfig(**spec.generation_config).save_pretrained(hf_dir)
    return {"vocab_size": full_size, "parameters": sum(p.numel() for p in model.parameters()),
            "trained_vocab": len(vocab_ids)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=sorted(TRAINED))
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    for name in args.only or TRAINED:
        train(name, args.steps, args.seed, args.batch_tokens, args.lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
