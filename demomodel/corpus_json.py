"""Dialogues answered in JSON: the prompts that ask for it and the objects the demo model
writes (standard library only)."""

from __future__ import annotations

import json
import random
from typing import Sequence

from .corpus_tasks import WORDS
from .corpus_tools import CITIES, CONDITIONS, MAX_TEMPERATURE, MIN_TEMPERATURE, random_weather

# ------------------------------------------------------------------ JSON answers

JSON_SUFFIX = "Answer in JSON."
JSON_SYSTEM_PROMPTS: list[str] = [
    "Respond only with JSON.",
    "Respond only with JSON.",
    "You are a helpful assistant. Respond only with JSON.",
    "Answer in JSON.",
]
NAMES: list[str] = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Ida", "Jack",
                    "Lena", "Max", "Nora", "Oscar", "Paul", "Rosa", "Sam", "Tom", "Vera", "Zoe"]
ANIMALS, FOODS, COLORS = WORDS[:25], WORDS[25:50], WORDS[50:60]
SIZES = ["small", "big", "tall", "short", "long"]
# key -> value maker, for "Give me a JSON object with the keys ..." (short values only).
JSON_KEYS: list[str] = ["name", "city", "color", "count", "size", "animal", "food", "ok", "items", "age",
                        "temperature", "condition", "weather", "pet"]
JSON_KEYS_PROMPTS: list[str] = [
    "Give me a JSON object with the {}.",
    "Give me a JSON object with the {}.",
    "Make a JSON object with the {}.",
    "Return a JSON object with the {}.",
]


def json_text(obj) -> str:
    """Compact JSON, as the model writes it: ``{"answer":"tiger lemon"}``."""
    return json.dumps(obj, separators=(",", ":"))


def json_prompt(prompt: str) -> str:
    """``prompt`` asking for a JSON answer: ``"What is 2 plus 3? Answer in JSON."``,
    ``"Repeat after me: tiger lemon. Answer in JSON."``."""
    return prompt + (" " if prompt[-1:] in (".", "?", "!") else ". ") + JSON_SUFFIX


def json_answer(answer: str | int) -> str:
    """The JSON form of an answer: ``{"answer":5}``, ``{"answer":"tiger lemon"}``."""
    return json_text({"answer": answer})


def json_keys_prompt(keys: Sequence[str], variant: int = 0) -> str:
    """``"Give me a JSON object with the keys name and city."`` (one key: ``the key name``)."""
    keys = list(keys)
    if len(keys) == 1:
        what = f"key {keys[0]}"
    else:
        what = "keys " + ", ".join(keys[:-1]) + " and " + keys[-1]
    return JSON_KEYS_PROMPTS[variant % len(JSON_KEYS_PROMPTS)].format(what)


def json_value(rng: random.Random, key: str):
    """A short value for ``key`` (one of :data:`JSON_KEYS`)."""
    if key == "name":
        return rng.choice(NAMES)
    if key == "city":
        return rng.choice(CITIES)
    if key == "color":
        return rng.choice(COLORS)
    if key == "count":
        return rng.randint(0, 20)
    if key == "size":
        return rng.choice(SIZES)
    if key == "animal":
        return rng.choice(ANIMALS)
    if key == "food":
        return rng.choice(FOODS)
    if key == "ok":
        return rng.random() < 0.5
    if key == "items":
        return [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
    if key == "age":
        return rng.randint(1, 90)
    if key == "temperature":
        return rng.randint(MIN_TEMPERATURE, MAX_TEMPERATURE)
    if key == "condition":
        return rng.choice(CONDITIONS)
    if key == "weather":
        return weather_object(rng.choice(CITIES), *random_weather(rng))
    if key == "pet":
        return {"animal": rng.choice(ANIMALS), "name": rng.choice(NAMES)}
    raise ValueError(key)


def random_json_object(rng: random.Random, keys: Sequence[str]) -> dict:
    return {k: json_value(rng, k) for k in keys}


def random_json_keys(rng: random.Random, k: int | None = None) -> list[str]:
    if k is None:
        k = rng.choices([1, 2, 3], weights=[0.25, 0.5, 0.25])[0]
    return rng.sample(JSON_KEYS, k)


def weather_object(city: str, temperature: int, condition: str) -> dict:
    """``{"city": "Paris", "temperature": 18, "condition": "sunny"}``, the JSON answer
    to ``json_prompt(weather_question("Paris"))`` (made up: the model has no tool)."""
    return {"city": city, "temperature": temperature, "condition": condition}


def time_object(city: str, time: str) -> dict:
    return {"city": city, "time": time}
