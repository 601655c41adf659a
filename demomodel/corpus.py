"""Training dialogues for the demo model (standard library only).

The server's test suite imports this module from the runtime venv (no torch, no
numpy) to sample fresh prompts, so keep it free of third-party imports.

Every dialogue is a list of ``{"role": ..., "content": ...}`` messages rendered
with the ChatML template in :data:`CHAT_TEMPLATE`; the model is trained on the
assistant contents (plus the closing ``<|im_end|>``) only.
This module samples the dialogues and the plain-text documents, and names every part
of the corpus; the parts are written beside it: the chat format and its rendering
(corpus_chatml.py), the original tasks (corpus_tasks.py), dialogues with tools
(corpus_tools.py) and JSON answers (corpus_json.py), all standard library only.
"""

from __future__ import annotations

import random

from .corpus_chatml import (CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_START, SPECIAL_TOKENS,
                            assistant_text, render_chatml, render_parts, tool_call_text)
from .corpus_tasks import (COMMON_TEXT, FALLBACK_ANSWER, FALLBACK_QUESTIONS, GREETING_ANSWER,
                           IDENTITY_ANSWER, MARKUP_MAX_WORDS, MARKUP_TEMPLATES, MAX_ADD, MAX_COUNT,
                           SMALL_TALK, SYSTEM_PROMPTS, THANKS_ANSWER, WORDS, addition_answer,
                           addition_prompt, count_answer, count_prompt, markup_repeat, markup_text,
                           random_markup, random_words, repeat_answer, repeat_prompt)
from .corpus_json import (ANIMALS, COLORS, FOODS, JSON_KEYS, JSON_KEYS_PROMPTS, JSON_SUFFIX,
                          JSON_SYSTEM_PROMPTS, NAMES, SIZES, json_answer, json_keys_prompt,
                          json_prompt, json_text, json_value, random_json_keys, random_json_object,
                          time_object, weather_object)
from .corpus_tools import (CITIES, CONDITIONS, DISTRACTOR_TOOLS, MAX_TEMPERATURE, MIN_TEMPERATURE,
                           TIME_QUESTIONS, TIME_RESULT_KEYS, TOOLS, TOOL_NAMES, TOOL_SPECS,
                           WEATHER_QUESTIONS, WEATHER_RESULT_KEYS, make_tool, random_time,
                           random_tool_style, random_tools, random_weather, time_answer,
                           time_question, time_result, time_tool, tool_call_message, tool_exchange,
                           tool_result_message, weather_answer, weather_question, weather_result,
                           weather_tool)

# Every name of the corpus, wherever it is defined: the build, the evaluation and the
# tests read them as demomodel.corpus.NAME.
__all__ = [
    "ANIMALS", "CHAT_TEMPLATE", "CITIES", "COLORS", "COMMON_TEXT", "CONDITIONS", "COUNT_STEPS",
    "DAYS", "DISTRACTOR_TOOLS", "ENDOFTEXT", "FALLBACK_ANSWER", "FALLBACK_QUESTIONS",
    "FAMILY_WEIGHTS", "FOODS", "GREETING_ANSWER", "HISTORY_WEIGHTS", "IDENTITY_ANSWER", "IM_END",
    "IM_START", "JSON_KEYS", "JSON_KEYS_PROMPTS", "JSON_KIND_WEIGHTS", "JSON_SUFFIX",
    "JSON_SYSTEM_PROMPTS", "KIND_WEIGHTS", "LETTERS", "MARKUP_MAX_WORDS", "MARKUP_TEMPLATES",
    "MAX_ADD", "MAX_COUNT", "MAX_TEMPERATURE", "MIN_TEMPERATURE", "MONTHS", "NAMES", "NUMBER_WORDS",
    "SEQUENCES", "SIZES", "SMALL_TALK", "SPECIAL_TOKENS", "STORIES", "STORY_ADJECTIVES",
    "STORY_PLACES", "STORY_VEHICLES", "SYSTEM_PROMPTS", "TEXT_KIND_WEIGHTS", "THANKS_ANSWER",
    "TIME_QUESTIONS", "TIME_RESULT_KEYS", "TOOLS", "TOOL_KIND_WEIGHTS", "TOOL_NAMES", "TOOL_SPECS",
    "TOOL_TASK_WEIGHTS", "WEATHER_QUESTIONS", "WEATHER_RESULT_KEYS", "WORDS", "addition_answer",
    "addition_prompt", "all_addition_dialogues", "assistant_text", "count_answer", "count_prompt",
    "json_answer", "json_keys_prompt", "json_prompt", "json_text", "json_value", "make_tool",
    "markup_repeat", "markup_text", "number_sequence", "random_json_keys", "random_json_object",
    "random_markup", "random_time", "random_tool_style", "random_tools", "random_weather",
    "random_words", "render_chatml", "render_parts", "repeat_answer", "repeat_prompt",
    "sample_dialogue", "sample_text", "single_token_items", "story_text", "time_answer",
    "time_object", "time_question", "time_result", "time_tool", "tokenizer_training_text",
    "tool_call_message", "tool_call_text", "tool_exchange", "tool_result_message", "weather_answer",
    "weather_object", "weather_question", "weather_result", "weather_tool",
]


# ------------------------------------------------------------- dialogue sampler

def _exchange(rng: random.Random, kind: str, in_history: bool = False) -> tuple[str, str]:
    if kind == "repeat":
        # longer phrases are the harder ones: train on them more often
        w = random_words(rng, rng.choices([1, 2, 3], weights=[0.2, 0.35, 0.45])[0])
        return repeat_prompt(w), repeat_answer(w)
    if kind == "markup":
        return markup_repeat(*random_markup(rng))
    if kind == "add":
        a, b = rng.randint(0, MAX_ADD), rng.randint(0, MAX_ADD)
        return addition_prompt(a, b), addition_answer(a, b)
    if kind == "count":
        n = rng.randint(1, 20) if in_history else rng.randint(1, MAX_COUNT)
        return count_prompt(n), count_answer(n)
    if kind == "short_count":
        n = rng.randint(1, 60)
        return count_prompt(n), count_answer(n)
    if kind == "talk":
        variants, answer = rng.choice(SMALL_TALK)
        return rng.choice(variants), answer
    if kind == "fallback":
        return rng.choice(FALLBACK_QUESTIONS), FALLBACK_ANSWER
    if kind == "no_tool":  # a weather or time question, but no tool to answer it
        city = rng.choice(CITIES)
        if rng.random() < 0.6:
            return weather_question(city, rng.randrange(len(WEATHER_QUESTIONS))), FALLBACK_ANSWER
        return time_question(city, rng.randrange(len(TIME_QUESTIONS))), FALLBACK_ANSWER
    raise ValueError(kind)


def _json_exchange(rng: random.Random, kind: str, suffix: bool) -> tuple[str, str]:
    """A JSON answer: ``kind`` "task" (repeat, addition, small talk, fallback), "keys"
    or "weather"; ``suffix`` appends "Answer in JSON." to the question."""
    if kind == "keys":
        keys = random_json_keys(rng)
        return json_keys_prompt(keys, rng.randrange(len(JSON_KEYS_PROMPTS))), json_text(random_json_object(rng, keys))
    if kind == "weather":
        city = rng.choice(CITIES)
        if rng.random() < 0.7:
            prompt = weather_question(city, rng.randrange(len(WEATHER_QUESTIONS)))
            answer = json_text(weather_object(city, *random_weather(rng)))
        else:
            prompt = time_question(city, rng.randrange(len(TIME_QUESTIONS)))
            answer = json_text(time_object(city, random_time(rng)))
    else:
        task = rng.choices(["repeat", "add", "talk", "fallback"], weights=[0.55, 0.3, 0.12, 0.03])[0]
        if task == "repeat":
            w = random_words(rng, rng.choices([1, 2, 3], weights=[0.2, 0.35, 0.45])[0])
            prompt, answer = repeat_prompt(w), json_answer(repeat_answer(w))
        elif task == "add":
            a, b = rng.randint(0, MAX_ADD), rng.randint(0, MAX_ADD)
            prompt, answer = addition_prompt(a, b), json_answer(a + b)
        else:
            prompt, plain = _exchange(rng, task)
            answer = json_answer(plain)
    return (json_prompt(prompt) if suffix else prompt), answer


# Dialogue families: plain ChatML (the original tasks), with tools offered, JSON answers.
FAMILY_WEIGHTS = {"plain": 0.62, "tools": 0.24, "json": 0.14}
# Share of each kind for the final (scored) exchange of a plain dialogue.
KIND_WEIGHTS = {"repeat": 0.45, "markup": 0.16, "add": 0.15, "count": 0.10, "talk": 0.07,
                "fallback": 0.04, "no_tool": 0.03}
HISTORY_WEIGHTS = {"repeat": 0.36, "markup": 0.08, "add": 0.23, "count": 0.08, "talk": 0.18,
                   "fallback": 0.07, "no_tool": 0.03}
# With tools: a call (the dialogue ends there), a call answered by its result (the
# scored turn is the sentence), an old task (no call), a question whose tool is missing.
TOOL_KIND_WEIGHTS = {"call": 0.30, "result": 0.46, "task": 0.19, "missing": 0.05}
TOOL_TASK_WEIGHTS = {"repeat": 0.36, "markup": 0.1, "add": 0.22, "short_count": 0.07, "talk": 0.17,
                     "fallback": 0.08}
JSON_KIND_WEIGHTS = {"task": 0.5, "keys": 0.3, "weather": 0.2}
# Fallback questions that would be tool questions without a city (not used with tools).
_TOOLISH = {"What time is it?", "What is the weather like today?"}


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _turns(rng: random.Random, multi_turn_share: float) -> int:
    return rng.choice([2, 2, 3]) if rng.random() < multi_turn_share else 1


def sample_dialogue(rng: random.Random, system_share: float = 0.35,
                    multi_turn_share: float = 0.35) -> tuple[list[dict], list[dict] | None]:
    """One training dialogue ``(messages, tools)``: optional system message, then 1-3
    user/assistant exchanges; ``tools`` (None for no tools) go to the template."""
    family = _pick(rng, FAMILY_WEIGHTS)
    if family == "tools":
        return _tools_dialogue(rng, system_share, multi_turn_share)
    if family == "json":
        return _json_dialogue(rng, system_share, multi_turn_share), None
    messages: list[dict] = []
    if rng.random() < system_share:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns = _turns(rng, multi_turn_share)
    for t in range(turns):
        last = t == turns - 1
        kind = _pick(rng, KIND_WEIGHTS if last else HISTORY_WEIGHTS)
        user, assistant = _exchange(rng, kind, in_history=not last)
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return messages, None


def _tools_dialogue(rng: random.Random, system_share: float,
                    multi_turn_share: float) -> tuple[list[dict], list[dict]]:
    messages: list[dict] = []
    if rng.random() < system_share:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    kind = _pick(rng, TOOL_KIND_WEIGHTS)
    final_tool = rng.choice(["get_weather", "get_weather", "get_time"])
    needed: list[str] = []
    turns = rng.choice([2, 2, 3]) if rng.random() < multi_turn_share * 0.6 else 1
    for _ in range(turns - 1):
        if kind != "missing" and rng.random() < 0.5:
            tool = rng.choice(["get_weather", "get_weather", "get_time"])
            needed.append(tool)
            messages += tool_exchange(rng, tool)
        else:
            user, assistant = _exchange(rng, _pick(rng, TOOL_TASK_WEIGHTS), in_history=True)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if kind in ("call", "result"):
        needed.append(final_tool)
        messages += tool_exchange(rng, final_tool, with_result=kind == "result")
        tools = random_tools(rng, needed)
    elif kind == "missing":
        user, _ = _exchange(rng, "no_tool")
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": FALLBACK_ANSWER}]
        missing = "get_weather" if "weather" in user else "get_time"
        tools = random_tools(rng, exclude=[missing])
    else:
        while True:
            user, assistant = _exchange(rng, _pick(rng, TOOL_TASK_WEIGHTS))
            if user not in _TOOLISH:
                break
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        tools = random_tools(rng, needed)
    return messages, tools


def _json_dialogue(rng: random.Random, system_share: float, multi_turn_share: float) -> list[dict]:
    messages: list[dict] = []
    json_system = rng.random() < 0.4
    if json_system:
        messages.append({"role": "system", "content": rng.choice(JSON_SYSTEM_PROMPTS)})
    elif rng.random() < system_share:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns = _turns(rng, multi_turn_share)
    for t in range(turns):
        last = t == turns - 1
        if json_system or last or rng.random() < 0.4:
            suffix = not json_system or rng.random() < 0.3
            user, assistant = _json_exchange(rng, _pick(rng, JSON_KIND_WEIGHTS), suffix)
        else:
            user, assistant = _exchange(rng, _pick(rng, HISTORY_WEIGHTS), in_history=True)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


def all_addition_dialogues() -> list[tuple[list[dict], None]]:
    """All 441 addition pairs as single-turn dialogues ``(messages, None)``."""
    return [
        ([{"role": "user", "content": addition_prompt(a, b)},
          {"role": "assistant", "content": addition_answer(a, b)}], None)
        for a in range(MAX_ADD + 1) for b in range(MAX_ADD + 1)
    ]


# ------------------------------------------------------------------ plain text

# Plain-text documents for /v1/completions (no chat template): the model continues a
# prompt that begins one of them. Every document is trained on all its tokens; a
# document that reaches its end is followed by <|endoftext|>, one cut short (a window of
# a long count or a repeated pattern) is not, so the model learns where the end is and
# that a cut has none.
DAYS: list[str] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS: list[str] = ["January", "February", "March", "April", "May", "June", "July", "August",
                     "September", "October", "November", "December"]
NUMBER_WORDS: list[str] = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                           "eighteen", "nineteen", "twenty"]
LETTERS: list[str] = list("abcdefghijklmnopqrstuvwxyz")
# Lists a document runs through to their end.
SEQUENCES: list[list[str]] = [DAYS, MONTHS, NUMBER_WORDS, LETTERS, [c.upper() for c in LETTERS]]
# Number sequences: steps and their shares; the terms run up to MAX_COUNT.
COUNT_STEPS = {1: 0.6, 2: 0.15, 5: 0.1, 10: 0.15}

# Story openings: each slot has a usual value (drawn half of the time, so that the bare
# opening has one greedy continuation) and the values it may take otherwise.
STORY_ADJECTIVES = ["small", "big", "warm", "quiet", "dark", "clean", "tall", "new"]
STORY_PLACES = ["river", "forest", "lake", "ocean", "mountain", "garden", "bridge", "road"]
STORY_VEHICLES = ["train", "boat", "ship", "plane", "bike", "car"]
STORIES: list[tuple[str, dict[str, tuple[str, list[str]]]]] = [
    ("Once upon a time there was a little {animal}. The {animal} lived in a {adjective} house near the {place}.",
     {"animal": ("cat", WORDS[:25]), "adjective": ("small", STORY_ADJECTIVES), "place": ("river", STORY_PLACES)}),
    ("One day the {animal} went to {city} by {vehicle}.",
     {"animal": ("dog", WORDS[:25]), "city": ("Paris", CITIES), "vehicle": ("train", STORY_VEHICLES)}),
    ("The quick brown fox jumps over the lazy dog.", {}),
    ("It was a dark and stormy night.", {}),
    ("Hello, world!", {}),
]
TEXT_KIND_WEIGHTS = {"count": 0.4, "story": 0.3, "sequence": 0.18, "pattern": 0.12}


def story_text(template: str, slots: dict[str, tuple[str, list[str]]], rng: random.Random | None = None) -> str:
    """A story of :data:`STORIES` with its usual values (``rng``: each slot drawn, half
    of the time its usual value)."""
    values = {}
    for name, (usual, others) in slots.items():
        values[name] = usual if rng is None or rng.random() < 0.5 else rng.choice(others)
    return template.format(**values)


def number_sequence(start: int, step: int, terms: int) -> tuple[str, bool]:
    """``("5 6 7", False)``: ``terms`` numbers from ``start`` by ``step``, cut at
    MAX_COUNT; True when the next term would pass MAX_COUNT (the document ends there)."""
    numbers = list(range(start, MAX_COUNT + 1, step))[:terms]
    return " ".join(map(str, numbers)), numbers[-1] + step > MAX_COUNT


def sample_text(rng: random.Random) -> tuple[str, bool]:
    """One plain-text document ``(text, ends)``: ``ends`` says it is whole (followed by
    <|endoftext|> in training), not a window cut from a longer one."""
    kind = _pick(rng, TEXT_KIND_WEIGHTS)
    if kind == "count":
        step = rng.choices(list(COUNT_STEPS), weights=list(COUNT_STEPS.values()))[0]
        if rng.random() < 0.45:  # where a person starts: 0 or 1, or 0 or the step
            start = rng.choice([0, 1] if step == 1 else [0, step])
        elif rng.random() < 0.7:  # a multiple of the step
            start = step * rng.randint(0, MAX_COUNT // step - 2)
        else:
            start = rng.randint(0, MAX_COUNT - 2 * step)
        terms = MAX_COUNT + 1 if rng.random() < 0.15 else rng.randint(3, 60)
        return number_sequence(start, step, terms)
    if kind == "story":
        template, slots = rng.choice(STORIES)
        return story_text(template, slots, rng), True
    if kind == "sequence":
        items = rng.choice(SEQUENCES)
        start = 0 if rng.random() < 0.5 else rng.randrange(len(items) - 1)
        return " ".join(items[start:]), True
    pattern = random_words(rng)  # a repeated pattern of 1-3 words, cut anywhere
    return " ".join((pattern * 40)[: rng.randint(len(pattern) + 2, 40)]), False


def single_token_items() -> list[str]:
    """Words that the tokenizer keeps as one token, with and without a leading space:
    WORDS, the numbers 0..200, the words of CITIES and the CONDITIONS (the model copies
    them from the prompt; their two forms start from one embedding)."""
    city_words = list(dict.fromkeys(w for c in CITIES for w in c.split()))
    return list(dict.fromkeys(WORDS + [str(i) for i in range(MAX_COUNT + 1)] + city_words + CONDITIONS))


def tokenizer_training_text(seed: int = 1234, dialogues: int = 20000) -> list[str]:
    """Lines used to train the BPE tokenizer: rendered dialogues plus each word and
    number (with and without a leading space) so that they become single tokens."""
    rng = random.Random(seed)
    lines = []
    for _ in range(dialogues):
        messages, tools = sample_dialogue(rng)
        lines.append(render_chatml(messages, tools=tools))
    vocab_items = single_token_items()
    common = COMMON_TEXT.split()
    for _ in range(8):
        shuffled = common[:]
        rng.shuffle(shuffled)
        lines.append(" ".join(shuffled))
        lines.append(" ".join(w.capitalize() for w in shuffled) + ".")
    for _ in range(30):
        lines.append(" ".join(vocab_items))
        lines.append("\n".join(vocab_items))
    return lines
