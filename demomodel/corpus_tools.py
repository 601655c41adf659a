"""Dialogues with tools offered: the tools the demo model knows, the questions that call
them, their results and the answers written from them (standard library only)."""

from __future__ import annotations

import json
import random
from typing import Iterable, Sequence

# ------------------------------------------------------------------ tools

# Well-known cities (one or two words); each word is a single token of the tokenizer.
CITIES: list[str] = [
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Moscow", "Beijing", "Sydney", "Cairo",
    "Dubai", "Toronto", "Chicago", "Boston", "Seattle", "Miami", "Lisbon", "Vienna", "Prague", "Oslo",
    "Stockholm", "Dublin", "Athens", "Istanbul", "Mumbai", "Delhi", "Bangkok", "Seoul", "Singapore",
    "Amsterdam", "New York", "Los Angeles", "San Francisco", "Hong Kong", "Buenos Aires", "Mexico City",
    "Cape Town", "Las Vegas", "Kuala Lumpur", "Tel Aviv",
]
CONDITIONS: list[str] = ["sunny", "cloudy", "rainy", "snowy", "windy"]
MIN_TEMPERATURE, MAX_TEMPERATURE = -10, 40

WEATHER_QUESTIONS: list[str] = [
    "What is the weather in {}?",
    "What's the weather like in {}?",
    "How is the weather in {}?",
    "What is the weather like in {}?",
]
TIME_QUESTIONS: list[str] = [
    "What time is it in {}?",
    "What is the time in {}?",
    "What's the time in {}?",
]

# name -> (description variants, {parameter: (JSON type, description variants)}); the
# first variant of each is the canonical one (TOOLS).
TOOL_SPECS: dict[str, tuple[list[str], dict[str, tuple[str, list[str]]]]] = {
    "get_weather": (
        ["Get the current weather in a city.", "Get the current weather for a city.",
         "Returns the current weather in the given city.", "Current weather in a city."],
        {"city": ("string", ["The city name.", "Name of the city, e.g. Paris.", "The city."])},
    ),
    "get_time": (
        ["Get the local time in a city.", "Get the current local time in a city.",
         "Returns the local time in the given city.", "Local time in a city."],
        {"city": ("string", ["The city name.", "Name of the city, e.g. Tokyo.", "The city."])},
    ),
    "search_web": (
        ["Search the web.", "Search the web for a query.", "Search the internet and return the top results."],
        {"query": ("string", ["The search query.", "What to search for."])},
    ),
    "send_email": (
        ["Send an email.", "Send an email to someone.", "Send an email message."],
        {"to": ("string", ["The email address.", "The recipient."]),
         "subject": ("string", ["The subject.", "The subject line."]),
         "body": ("string", ["The text of the email.", "The message body."])},
    ),
    "add": (
        ["Add two integers.", "Add two numbers.", "Return the sum of a and b."],
        {"a": ("integer", ["The first number.", "First addend."]),
         "b": ("integer", ["The second number.", "Second addend."])},
    ),
    "get_stock_price": (
        ["Get the current price of a stock.", "Look up a stock price."],
        {"symbol": ("string", ["The ticker symbol, e.g. AAPL.", "The stock symbol."])},
    ),
}
TOOL_NAMES: list[str] = list(TOOL_SPECS)


def make_tool(name: str, *, description: int | None = 0, param_descriptions: int | None = None,
              required: bool = True, closed: bool = False, strict: bool | None = None,
              required_first: bool = False) -> dict:
    """An OpenAI tool object for one of :data:`TOOL_SPECS`, keys in the order the server
    validates them to (function: name, description, parameters, strict). ``description``
    and ``param_descriptions`` pick a variant (None: left out); ``required`` lists every
    parameter as required, ``closed`` adds ``"additionalProperties": false``."""
    descriptions, params = TOOL_SPECS[name]
    properties = {}
    for pname, (ptype, pdescs) in params.items():
        prop = {"type": ptype}
        if param_descriptions is not None:
            prop["description"] = pdescs[param_descriptions % len(pdescs)]
        properties[pname] = prop
    parameters: dict = {"type": "object"}
    if required and required_first:
        parameters["required"] = list(params)
    parameters["properties"] = properties
    if required and not required_first:
        parameters["required"] = list(params)
    if closed:
        parameters["additionalProperties"] = False
    function: dict = {"name": name}
    if description is not None:
        function["description"] = descriptions[description % len(descriptions)]
    function["parameters"] = parameters
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def weather_tool(**style) -> dict:
    """``get_weather(city: string)``, "Get the current weather in a city." (style: see :func:`make_tool`)."""
    return make_tool("get_weather", **style)


def time_tool(**style) -> dict:
    """``get_time(city: string)``, "Get the local time in a city." (style: see :func:`make_tool`)."""
    return make_tool("get_time", **style)


TOOLS: list[dict] = [make_tool(name) for name in TOOL_NAMES]  # canonical forms
DISTRACTOR_TOOLS: list[dict] = [t for t in TOOLS if t["function"]["name"] not in ("get_weather", "get_time")]


def random_tool_style(rng: random.Random) -> dict:
    return {
        "description": None if rng.random() < 0.1 else rng.randrange(4),
        "param_descriptions": None if rng.random() < 0.5 else rng.randrange(3),
        "required": rng.random() < 0.75,
        "closed": rng.random() < 0.3,
        "strict": rng.choice([None, None, None, True, False]),
        "required_first": rng.random() < 0.15,
    }


def random_tools(rng: random.Random, needed: Iterable[str] = (), k: int | None = None,
                 exclude: Iterable[str] = ()) -> list[dict]:
    """1-4 tools (``k``), shuffled, each in a random style, holding every name of
    ``needed`` and none of ``exclude``."""
    needed = list(dict.fromkeys(needed))
    others = [n for n in TOOL_NAMES if n not in needed and n not in set(exclude)]
    if k is None:
        k = max(len(needed), rng.choices([1, 2, 3, 4], weights=[0.35, 0.35, 0.18, 0.12])[0])
    names = needed + rng.sample(others, max(0, k - len(needed)))
    rng.shuffle(names)
    style = random_tool_style(rng) if rng.random() < 0.6 else None  # often one client, one style
    return [make_tool(n, **(style or random_tool_style(rng))) for n in names]


def weather_question(city: str, variant: int = 0) -> str:
    """``"What is the weather in Paris?"`` (``variant`` picks one of :data:`WEATHER_QUESTIONS`)."""
    return WEATHER_QUESTIONS[variant % len(WEATHER_QUESTIONS)].format(city)


def time_question(city: str, variant: int = 0) -> str:
    """``"What time is it in Tokyo?"`` (``variant`` picks one of :data:`TIME_QUESTIONS`)."""
    return TIME_QUESTIONS[variant % len(TIME_QUESTIONS)].format(city)


WEATHER_RESULT_KEYS: list[tuple[str, ...]] = [
    ("city", "temperature", "condition"), ("city", "temperature", "condition"),
    ("city", "temperature", "condition"), ("city", "temperature", "condition"),
    ("temperature", "condition"), ("city", "condition", "temperature"),
]
TIME_RESULT_KEYS: list[tuple[str, ...]] = [("city", "time"), ("city", "time"), ("city", "time"), ("time",)]


def weather_result(city: str, temperature: int, condition: str,
                   keys: Sequence[str] = WEATHER_RESULT_KEYS[0], compact: bool = False) -> str:
    """A get_weather result as a tool returns it: ``'{"city": "Paris", "temperature": 18,
    "condition": "sunny"}'`` (the ``keys`` in that order; ``compact``: no spaces)."""
    values = {"city": city, "temperature": temperature, "condition": condition}
    return _dumps({k: values[k] for k in keys}, compact)


def weather_answer(city: str, temperature: int, condition: str) -> str:
    """``"In Paris it is 18 degrees and sunny."`` (the result's values in the result's
    usual order: copying them in order is what a model this small learns reliably)."""
    return f"In {city} it is {temperature} degrees and {condition}."


def time_result(city: str, time: str, keys: Sequence[str] = TIME_RESULT_KEYS[0], compact: bool = False) -> str:
    """A get_time result: ``'{"city": "Tokyo", "time": "14:05"}'``."""
    values = {"city": city, "time": time}
    return _dumps({k: values[k] for k in keys}, compact)


def time_answer(city: str, time: str) -> str:
    """``"In Tokyo it is 14:05."``"""
    return f"In {city} it is {time}."


def random_time(rng: random.Random) -> str:
    return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"


def random_weather(rng: random.Random) -> tuple[int, str]:
    """(temperature, condition); a third of the temperatures below zero (a minus sign
    before the number is the harder copy)."""
    low = rng.random() < 0.35
    temperature = rng.randint(MIN_TEMPERATURE, -1) if low else rng.randint(0, MAX_TEMPERATURE)
    return temperature, rng.choice(CONDITIONS)



def _dumps(obj, compact: bool = False) -> str:
    return json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj)



def tool_call_message(name: str, arguments: dict, call_id: str = "call_1") -> dict:
    """An assistant message holding one call, as the server hands it to the template
    (arguments as an object, content empty)."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


def tool_result_message(content: str, call_id: str = "call_1") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_exchange(rng: random.Random, tool: str, city: str | None = None,
                  with_result: bool = True) -> list[dict]:
    """A weather (``tool="get_weather"``) or time (``"get_time"``) exchange: the user's
    question, the assistant's call and, ``with_result``, the tool's result and the
    assistant's one-sentence answer."""
    city = city or rng.choice(CITIES)
    if tool == "get_weather":
        question = weather_question(city, rng.randrange(len(WEATHER_QUESTIONS)))
    else:
        question = time_question(city, rng.randrange(len(TIME_QUESTIONS)))
    messages = [{"role": "user", "content": question},
                tool_call_message(tool, {"city": city}, f"call_{rng.randrange(10**6)}")]
    if with_result:
        compact = rng.random() < 0.15
        if tool == "get_weather":
            temperature, condition = random_weather(rng)
            result = weather_result(city, temperature, condition, rng.choice(WEATHER_RESULT_KEYS), compact)
            answer = weather_answer(city, temperature, condition)
        else:
            time = random_time(rng)
            result = time_result(city, time, rng.choice(TIME_RESULT_KEYS), compact)
            answer = time_answer(city, time)
        messages.append(tool_result_message(result, messages[-1]["tool_calls"][0]["id"]))
        messages.append({"role": "assistant", "content": answer})
    return messages
