"""Measure the exported demo model with onnxruntime-genai (runtime venv is enough).

    /work/main/.venv/bin/python -m demomodel.evaluate models/demo [--n 200] [--seed S]

Greedy decoding on fresh random prompts (a new seed each run unless --seed),
with and without a system prompt; the prompts are rendered by the model's own chat
template (and checked against ``corpus.render_chatml``), tools included.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from . import corpus

SYSTEM = "You are a helpful assistant."
JSON_SYSTEM = "Respond only with JSON."
MAX_NEW = 32
TOOL_MAX_NEW = 48
COUNT_NS = (10, 50, 150, 200)
COUNT_MAX_NEW = 600
SMALL_TALK_PROBES = ["Hello", "Who are you?", "Thank you", "What can you do?",
                     "What is the capital of Germany?", "Tell me a story."]
SAMPLED = 200  # temperature-1 samples of the weather question with tools


class Runner:
    def __init__(self, path: str):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(path)
        self.tok = og.Tokenizer(self.model)
        self.eos = set(int(t) for t in self.tok.eos_token_ids)
        with open(f"{path}/genai_config.json") as f:
            self.context_length = int(json.load(f)["model"]["context_length"])

    def prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        text = self.tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True,
                                            tools=json.dumps(tools) if tools else None)
        expected = corpus.render_chatml(messages, add_generation_prompt=True, tools=tools)
        if text != expected:
            raise AssertionError(f"chat template rendered {text!r}, expected {expected!r}")
        return text

    def generate(self, messages: list[dict], max_new: int, tools: list[dict] | None = None,
                 temperature: float | None = None) -> tuple[str, int, bool]:
        """Returns (answer text, generated tokens excluding EOS, ended with EOS); greedy
        unless ``temperature`` (then sampled with the model's other search defaults)."""
        return self.complete(self.prompt(messages, tools), max_new, temperature)

    def complete(self, prompt: str, max_new: int, temperature: float | None = None) -> tuple[str, int, bool]:
        """:meth:`generate` for a raw prompt (no chat template), as /v1/completions runs it."""
        og = self.og
        ids = self.tok.encode(prompt)
        params = og.GeneratorParams(self.model)
        options = dict(max_length=min(len(ids) + max_new, self.context_length))
        if temperature:
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False)
        params.set_search_options(**options)
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


def offered_tools(rng: random.Random, needed: str = "get_weather") -> list[dict]:
    """The needed tool (canonical form) and 0-3 others, shuffled."""
    others = [t for t in corpus.TOOLS if t["function"]["name"] != needed]
    tools = [t for t in corpus.TOOLS if t["function"]["name"] == needed] + rng.sample(others, rng.randint(0, 3))
    rng.shuffle(tools)
    return tools


def parse_call(text: str) -> tuple[str, dict] | None:
    """(name, arguments) of an answer that is exactly one well-formed <tool_call> block."""
    if not (text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>")):
        return None
    try:
        call = json.loads(text[len("<tool_call>\n"):-len("\n</tool_call>")])
    except ValueError:
        return None
    if not (isinstance(call, dict) and set(call) == {"name", "arguments"} and isinstance(call["arguments"], dict)):
        return None
    return call["name"], call["arguments"]


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _types_ok(obj, keys) -> bool:
    return (isinstance(obj, dict) and list(obj) == list(keys)
            and all(type(obj[k]) is type(corpus.json_value(random.Random(0), k)) for k in keys))


def tool_cases(rng: random.Random, n: int, system: str | None) -> dict[str, list]:
    """(messages, tools, expected answer, scorer) per kind of tool/JSON check; a scorer
    takes (text, expected) and says whether the answer is right."""
    exact = lambda text, expected: text == expected  # noqa: E731
    same_json = lambda text, expected: _json_or_none(text) == json.loads(expected)  # noqa: E731
    cases: dict[str, list] = {k: [] for k in (
        "tool call weather", "tool call time", "tool answer weather", "tool answer time",
        "tools + old task", "weather, no tools", "JSON answer", "JSON answer (system)",
        "JSON object keys", "JSON weather")}
    for i in range(n):
        city = rng.choice(corpus.CITIES)
        q = corpus.weather_question(city, rng.randrange(len(corpus.WEATHER_QUESTIONS)))
        cases["tool call weather"].append((_messages(q, system), offered_tools(rng),
                                           corpus.tool_call_text("get_weather", {"city": city}), exact))
        city = rng.choice(corpus.CITIES)
        q = corpus.time_question(city, rng.randrange(len(corpus.TIME_QUESTIONS)))
        cases["tool call time"].append((_messages(q, system), offered_tools(rng, "get_time"),
                                        corpus.tool_call_text("get_time", {"city": city}), exact))

        city = rng.choice(corpus.CITIES)
        temperature, condition = corpus.random_weather(rng)
        msgs = _messages(corpus.weather_question(city), system) + [
            corpus.tool_call_message("get_weather", {"city": city}),
            corpus.tool_result_message(corpus.weather_result(city, temperature, condition,
                                                             rng.choice(corpus.WEATHER_RESULT_KEYS)))]
        cases["tool answer weather"].append((msgs, offered_tools(rng), corpus.weather_answer(city, temperature, condition),
                                             exact))
        city, t = rng.choice(corpus.CITIES), corpus.random_time(rng)
        msgs = _messages(corpus.time_question(city), system) + [
            corpus.tool_call_message("get_time", {"city": city}),
            corpus.tool_result_message(corpus.time_result(city, t, rng.choice(corpus.TIME_RESULT_KEYS)))]
        cases["tool answer time"].append((msgs, offered_tools(rng, "get_time"), corpus.time_answer(city, t), exact))

        if i % 2:
            w = corpus.random_words(rng)
            prompt, answer = corpus.repeat_prompt(w), corpus.repeat_answer(w)
        else:
            a, b = rng.randint(0, corpus.MAX_ADD), rng.randint(0, corpus.MAX_ADD)
            prompt, answer = corpus.addition_prompt(a, b), corpus.addition_answer(a, b)
        cases["tools + old task"].append((_messages(prompt, system), offered_tools(rng), answer, exact))
        city = rng.choice(corpus.CITIES)
        cases["weather, no tools"].append((_messages(corpus.weather_question(city, i), system), None,
                                           corpus.FALLBACK_ANSWER, exact))

        kind = i % 3
        if kind == 0:
            w = corpus.random_words(rng)
            prompt, answer = corpus.repeat_prompt(w), corpus.json_answer(corpus.repeat_answer(w))
        elif kind == 1:
            a, b = rng.randint(0, corpus.MAX_ADD), rng.randint(0, corpus.MAX_ADD)
            prompt, answer = corpus.addition_prompt(a, b), corpus.json_answer(a + b)
        else:
            variants, plain = rng.choice(corpus.SMALL_TALK)
            prompt, answer = rng.choice(variants), corpus.json_answer(plain)
        cases["JSON answer"].append((_messages(corpus.json_prompt(prompt), system), None, answer, same_json))
        cases["JSON answer (system)"].append((_messages(prompt, JSON_SYSTEM), None, answer, same_json))

        keys = corpus.random_json_keys(rng)
        cases["JSON object keys"].append((_messages(corpus.json_keys_prompt(keys), system), None, keys,
                                          lambda text, keys: _types_ok(_json_or_none(text), keys)))
        city = rng.choice(corpus.CITIES)
        cases["JSON weather"].append((
            _messages(corpus.json_prompt(corpus.weather_question(city)), system), None, city,
            lambda text, city: _types_ok(_json_or_none(text), ["city", "temperature", "condition"])
            and json.loads(text)["city"] == city))
    return cases


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
    tool_rates = {}
    for kind, items in tool_cases(rng, n, system).items():
        good, shown = 0, 0
        for messages, tools, expected, score in items:
            text, ntok, eos = r.generate(messages, TOOL_MAX_NEW, tools)
            ok = score(text, expected)
            good += ok
            eos_count += eos
            lengths.append(ntok)
            if not (ok and eos) and shown < 5:
                shown += 1
                failures.append(f"[{kind}] {messages[-1]['content']!r} -> {text!r} eos={eos}")
        tool_rates[kind] = good / len(items)
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
        "tools": tool_rates, "eos": eos_count / len(lengths), "max_tokens": max(lengths),
        "mean_tokens": sum(lengths) / len(lengths), "count": counts, "talk": talk,
        "failures": failures,
    }


def plain_text_cases(rng: random.Random, n: int) -> dict[str, list[tuple[str, str, bool]]]:
    """(prompt, expected continuation, whether it ends with EOS) per kind of plain-text
    check: a number sequence's next terms (by 1 from anywhere, by 2, 5 or 10 from a
    multiple of the step), the rest of a list, a story whose animal the
    prompt names, a repeated pattern's next words."""
    cases: dict[str, list] = {"number sequence": [], "rest of a list": [], "story, animal given": [],
                              "repeated words": []}
    for _ in range(n):
        step = rng.choice(list(corpus.COUNT_STEPS))
        start = rng.randint(0, 100) if step == 1 else step * rng.randint(0, 100 // step)
        given = rng.randint(3, 6)
        text, _ = corpus.number_sequence(start, step, given)
        rest, ends = corpus.number_sequence(start + given * step, step, PLAIN_MAX_NEW)
        cases["number sequence"].append((text, " " + rest, ends))

        items = rng.choice(corpus.SEQUENCES)
        k = rng.randrange(1, len(items))
        cases["rest of a list"].append((" ".join(items[:k]), " " + " ".join(items[k:]), True))

        template, slots = corpus.STORIES[0]
        animal = rng.choice(corpus.WORDS[:25])
        story = template.format(animal=animal, adjective=slots["adjective"][0], place=slots["place"][0])
        cut = story.index(animal) + len(animal)
        cases["story, animal given"].append((story[:cut], story[cut:], True))

        pattern = corpus.random_words(rng)
        shown = pattern * 2
        cases["repeated words"].append((" ".join(shown), " " + " ".join((pattern * 10)[len(shown):len(shown) + 8]), False))
    return cases


PLAIN_MAX_NEW = 16
PLAIN_PROBES = ["1 2 3 4 5", "10 20 30", "Once upon a time", "Once upon a time there was a little fox",
                "One day", "The quick brown fox", "It was a", "Hello", "Monday", "January February", "a b c",
                "tiger lemon tiger lemon"]


def evaluate_plain(r: Runner, rng: random.Random, n: int) -> list[str]:
    """Report lines for plain-text continuation (no chat template)."""
    lines = []
    for kind, items in plain_text_cases(rng, n).items():
        good = 0
        for prompt, expected, ends in items:
            expected_tokens = len(r.tok.encode(expected))
            text, _, eos = r.complete(prompt, expected_tokens if not ends else expected_tokens + 4)
            good += text == expected and eos == ends
        lines.append(f"  {kind + ':':22s} {good / len(items):.1%}")
    text, _, eos = r.complete("1 2 3", 300)
    lines.append(f"  1 2 3 ...: {_count_outcome('1 2 3' + text, corpus.MAX_COUNT, eos)}")
    for prompt in PLAIN_PROBES:
        text, _, eos = r.complete(prompt, 32)
        lines.append(f"  {prompt!r} -> {text!r}" + (" EOS" if eos else " (32 tokens)"))
    return lines


def sampled_tool_calls(r: Runner, rng: random.Random, n: int, temperature: float = 1.0) -> dict:
    """At ``temperature``: how often the weather question with tools gets one well-formed
    <tool_call> (and how often exactly the right one)."""
    formed = right = 0
    for _ in range(n):
        city = rng.choice(corpus.CITIES)
        text, _, eos = r.generate(_messages(corpus.weather_question(city), None), TOOL_MAX_NEW,
                                  offered_tools(rng), temperature=temperature)
        call = parse_call(text) if eos else None
        formed += call is not None
        right += call == ("get_weather", {"city": city})
    return {"well_formed": formed / n, "right": right / n}


def run(path: str, n: int = 200, seed: int | None = None, verbose: bool = True,
        label: str | None = None) -> dict:
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 30)
    r = Runner(path)
    t0 = time.time()
    lines = [f"model {label or path}, seed {seed}, {n} prompts per check and condition, greedy, "
             f"max {MAX_NEW} new tokens ({TOOL_MAX_NEW} with tools / JSON)"]
    results = {}
    for label, system in (("no system prompt", None), (f"system {SYSTEM!r}", SYSTEM)):
        res = evaluate_condition(r, random.Random(seed), n, system)
        results[label] = res
        lines.append(f"[{label}]")
        lines.append(f"  repeat-after-me exact: {res['repeat']:.1%}")
        lines.append(f"  addition exact:        {res['addition']:.1%}")
        lines.append(f"  markup repeat exact:   {res['markup']:.1%}")
        for kind, rate in res["tools"].items():
            lines.append(f"  {kind + ':':22s} {rate:.1%}")
        lines.append(f"  ended with EOS:        {res['eos']:.1%}")
        lines.append(f"  mean answer tokens:    {res['mean_tokens']:.2f} (max {res['max_tokens']})")
        for cn, outcome in res["count"].items():
            lines.append(f"  count to {cn}: {outcome}")
        for q, a in res["talk"].items():
            lines.append(f"  {q!r} -> {a!r}")
        if verbose:
            for f in res["failures"]:
                lines.append(f"  FAIL {f}")
    lines.append(f"[plain text, no chat template ({n} prompts per check; greedy, "
                 f"up to the expected continuation's length)]")
    lines += evaluate_plain(r, random.Random(seed), n)
    sampled = sampled_tool_calls(r, random.Random(seed), SAMPLED)
    results["sampled"] = sampled
    lines.append(f"[temperature 1.0, {SAMPLED} weather questions with tools, no system prompt]")
    lines.append(f"  one well-formed tool call: {sampled['well_formed']:.1%}")
    lines.append(f"  the right call:            {sampled['right']:.1%}")
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
    conditions = [r for k, r in out["results"].items() if k != "sampled"]
    worst_old = min(min(r["repeat"], r["addition"], r["markup"], r["eos"]) for r in conditions)
    worst_new = min(min(r["tools"].values()) for r in conditions)
    return 0 if worst_old >= 0.98 and worst_new >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
