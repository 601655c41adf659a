"""Measure the exported demo model with onnxruntime-genai (runtime venv is enough).

    /work/main/.venv/bin/python -m demomodel.evaluate models/demo [--n 200] [--seed S]

Greedy decoding on fresh random prompts (a new seed each run unless --seed),
with and without a system prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from . import corpus

SYSTEM = "You are a helpful assistant."
MAX_NEW = 32
COUNT_NS = (10, 50, 200)
COUNT_MAX_NEW = 600
SMALL_TALK_PROBES = ["Hello", "Who are you?", "Thank you", "What can you do?",
                     "What is the capital of Germany?", "Tell me a story."]


class Runner:
    def __init__(self, path: str):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(path)
        self.tok = og.Tokenizer(self.model)
        self.eos = set(int(t) for t in self.tok.eos_token_ids)
        with open(f"{path}/genai_config.json") as f:
            self.context_length = int(json.load(f)["model"]["context_length"])

    def prompt(self, messages: list[dict]) -> str:
        text = self.tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        expected = corpus.render_chatml(messages, add_generation_prompt=True)
        if text != expected:
            raise AssertionError(f"chat template rendered {text!r}, expected {expected!r}")
        return text

    def generate(self, messages: list[dict], max_new: int) -> tuple[str, int, bool]:
        """Returns (answer text, generated tokens excluding EOS, ended with EOS)."""
        og = self.og
        ids = self.tok.encode(self.prompt(messages))
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=min(len(ids) + max_new, self.context_length))
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        out: list[int] = []
        eos = False
        while not gen.is_done():
            gen.generate_next_token()
            t = int(gen.get_next_tokens()[0])
            if t in self.eos:
                eos = True
                break
            out.append(t)
            if len(out) >= max_new:
                break
        return self.tok.decode(out), len(out), eos


def _messages(user: str, system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def _count_outcome(text: str, n: int, eos: bool) -> str:
    if text == corpus.count_answer(n) and eos:
        return "exact, EOS"
    nums = text.split()
    good = 0
    for i, s in enumerate(nums):
        if s != str(i + 1):
            break
        good += 1
    return (f"{len(nums)} items, first {good} correct, last {nums[-1] if nums else None!r}, "
            f"{'EOS' if eos else 'no EOS'}")


def evaluate_condition(r: Runner, rng: random.Random, n: int, system: str | None) -> dict:
    repeats = [corpus.random_words(rng) for _ in range(n)]
    additions = [(rng.randint(0, corpus.MAX_ADD), rng.randint(0, corpus.MAX_ADD)) for _ in range(n)]
    markups = [corpus.random_markup(rng) for _ in range(n)]
    cases = {
        "repeat": [(corpus.repeat_prompt(w), corpus.repeat_answer(w)) for w in repeats],
        "addition": [(corpus.addition_prompt(a, b), corpus.addition_answer(a, b)) for a, b in additions],
        "markup": [corpus.markup_repeat(t, w) for t, w in markups],
    }
    right = {kind: 0 for kind in cases}
    eos_count = 0
    lengths: list[int] = []
    failures: list[str] = []
    for kind, pairs in cases.items():
        shown = 0
        for prompt, answer in pairs:
            text, ntok, eos = r.generate(_messages(prompt, system), MAX_NEW)
            right[kind] += text == answer
            eos_count += eos
            lengths.append(ntok)
            if not (text == answer and eos) and shown < 8:
                shown += 1
                failures.append(f"{prompt!r} -> {text!r} eos={eos}")
    counts = {}
    for cn in COUNT_NS:
        text, ntok, eos = r.generate(_messages(corpus.count_prompt(cn), system), COUNT_MAX_NEW)
        counts[cn] = _count_outcome(text, cn, eos)
    talk = {}
    for q in SMALL_TALK_PROBES:
        text, _, eos = r.generate(_messages(q, system), MAX_NEW)
        talk[q] = text + ("" if eos else " [no EOS]")
    return {
        "repeat": right["repeat"] / n, "addition": right["addition"] / n, "markup": right["markup"] / n,
        "eos": eos_count / len(lengths), "max_tokens": max(lengths),
        "mean_tokens": sum(lengths) / len(lengths), "count": counts, "talk": talk,
        "failures": failures,
    }


def run(path: str, n: int = 200, seed: int | None = None, verbose: bool = True,
        label: str | None = None) -> dict:
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 30)
    r = Runner(path)
    t0 = time.time()
    lines = [f"model {label or path}, seed {seed}, {n} repeat + {n} addition + {n} markup-repeat prompts "
             f"per condition, greedy, max {MAX_NEW} new tokens"]
    results = {}
    for label, system in (("no system prompt", None), (f"system {SYSTEM!r}", SYSTEM)):
        res = evaluate_condition(r, random.Random(seed), n, system)
        results[label] = res
        lines.append(f"[{label}]")
        lines.append(f"  repeat-after-me exact: {res['repeat']:.1%}")
        lines.append(f"  addition exact:        {res['addition']:.1%}")
        lines.append(f"  markup repeat exact:   {res['markup']:.1%}")
        lines.append(f"  ended with EOS:        {res['eos']:.1%}")
        lines.append(f"  mean answer tokens:    {res['mean_tokens']:.2f} (max {res['max_tokens']})")
        for cn, outcome in res["count"].items():
            lines.append(f"  count to {cn}: {outcome}")
        for q, a in res["talk"].items():
            lines.append(f"  {q!r} -> {a!r}")
        if verbose:
            for f in res["failures"]:
                lines.append(f"  FAIL {f}")
    lines.append(f"({time.time() - t0:.0f}s)")
    text = "\n".join(lines)
    if verbose:
        print(text, flush=True)
    return {"seed": seed, "text": "\n".join(l for l in lines if not l.startswith("  FAIL")),
            "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", nargs="?", default="models/demo")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    out = run(args.model, n=args.n, seed=args.seed, verbose=True)
    worst = min(min(r["repeat"], r["addition"], r["markup"], r["eos"]) for r in out["results"].values())
    return 0 if worst >= 0.98 else 1


if __name__ == "__main__":
    sys.exit(main())
