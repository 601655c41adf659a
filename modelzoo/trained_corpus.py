"""The dialogues the zoo's trained models learn (modelzoo/trained.py): a narrow world of two
tools, a few dozen cities, greetings and repetitions, in OpenAI message form.

Each example is one assistant turn to learn: ``(messages, tools)`` where
``messages`` ends with that assistant message (``reasoning_content`` holding its thinking,
``tool_calls`` with arguments as dicts, as Hugging Face templates take them) and the
family's chat template renders the prompt before it and the text it must write.

Weather requests name ``CITIES`` or made-up names (:func:`made_up_city`, as many as there
are requests: a model cannot learn them by heart, it has to copy the name);
``HELD_OUT_CITIES`` appear in repetitions only (so their tokens are trained), and a
weather request naming one of them is an answer the models never saw: the tests ask
about those.
"""

from __future__ import annotations

import json
import random

CITIES = [
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Warsaw", "Athens", "Cairo", "Nairobi", "Lagos", "Tokyo", "Seoul", "Beijing",
    "Shanghai", "Mumbai", "Delhi", "Bangkok", "Jakarta", "Manila", "Sydney", "Melbourne", "Auckland", "Toronto",
    "Montreal", "Chicago", "Boston", "Denver", "Seattle", "Houston", "Miami", "Lima", "Santiago", "Bogota",
    "Havana", "Istanbul", "Moscow", "Kyiv", "Zurich", "Geneva", "Brussels", "Amsterdam",
]
HELD_OUT_CITIES = ["Barcelona", "Munich", "Osaka", "Dallas", "Quebec", "Porto"]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"]

SYLLABLES = ["ka", "lo", "mer", "vin", "dra", "sol", "ta", "ri", "ben", "gor", "pa", "lu", "zen", "mo", "tor",
             "vi", "na", "sel", "qu", "bar", "ost", "el", "um", "ya"]

SYSTEM = "You are a helpful assistant."


def made_up_city(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def weather_city(rng: random.Random) -> str:
    return rng.choice(CITIES) if rng.random() < 0.5 else made_up_city(rng)

WEATHER_QUESTIONS = [
    "What is the weather in {city}?",
    "What's the weather like in {city}?",
    "How is the weather in {city} today?",
    "Tell me the weather in {city}.",
]
ADD_QUESTIONS = [
    "What is {a} plus {b}?",
    "Add {a} and {b}.",
    "Please compute {a} + {b}.",
]
GREETINGS = ["Hello!", "Hi there!", "Good morning!", "Hey!"]
GREETING_ANSWER = "Hello! How can I help you today?"
WHO = ["Who are you?", "What are you?"]
WHO_ANSWER = "I am a tiny test model."


def weather_tool(rng: random.Random | None = None) -> dict:
    """get_weather(city); with ``rng``, its description and ``required`` vary (templates
    and renderers show a schema differently: the models must not depend on its details)."""
    described = rng is None or rng.random() < 0.7
    required = rng is None or rng.random() < 0.7
    city = {"type": "string", **({"description": "The city name"} if described else {})}
    params = {"type": "object", "properties": {"city": city}, **({"required": ["city"]} if required else {})}
    function = {"name": "get_weather", **({"description": "Get the current weather in a city"} if described else {}),
                "parameters": params}
    return {"type": "function", "function": function}


def add_tool(rng: random.Random | None = None) -> dict:
    """add(a, b), varied like :func:`weather_tool`."""
    described = rng is None or rng.random() < 0.7
    required = rng is None or rng.random() < 0.7
    params = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
              **({"required": ["a", "b"]} if required else {})}
    function = {"name": "add", **({"description": "Add two numbers"} if described else {}), "parameters": params}
    return {"type": "function", "function": function}


TOOLS = [weather_tool(), add_tool()]


def weather_result(city: str, temperature: int, condition: str) -> str:
    return json.dumps({"city": city, "temperature": temperature, "condition": condition})


def weather_answer(city: str, temperature: int, condition: str) -> str:
    return f"It is {condition} and {temperature} degrees in {city}."


def weather_call_thinking(city: str) -> str:
    return f"The user asks for the weather in {city}. I will call get_weather."


def weather_result_thinking(city: str, temperature: int, condition: str) -> str:
    return f"The weather in {city} is {condition}, {temperature} degrees."


def add_answer(a: int, b: int) -> str:
    return f"{a} plus {b} is {a + b}."


def add_call_thinking(a: int, b: int) -> str:
    return f"The user wants {a} plus {b}. I will call add."


def add_result_thinking(a: int, b: int) -> str:
    return f"add returned {a + b}."


def call(name: str, arguments: dict, index: int = 0) -> dict:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(rng: random.Random, needed: str | None) -> list[dict]:
    pool = {"get_weather": weather_tool(rng), "add": add_tool(rng)}
    names = [needed] if needed else []
    for other in ("get_weather", "add"):
        if other != needed and (not names or rng.random() < 0.6):
            names.append(other)
    rng.shuffle(names)
    return [pool[n] for n in names]


def _start(rng: random.Random) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []


def round_trip(rng: random.Random, cities=None) -> list[tuple[list[dict], list[dict]]]:
    """A tool round trip: the call, then the answer from the tool's result (two examples).
    The city is one of ``cities`` if given."""
    if rng.random() < 0.6:
        city = rng.choice(cities) if cities else weather_city(rng)
        temperature, condition = rng.randint(-5, 35), rng.choice(CONDITIONS)
        question = rng.choice(WEATHER_QUESTIONS).format(city=city)
        name, arguments = "get_weather", {"city": city}
        call_thinking = weather_call_thinking(city)
        result = weather_result(city, temperature, condition)
        result_thinking = weather_result_thinking(city, temperature, condition)
        answer = weather_answer(city, temperature, condition)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = rng.choice(ADD_QUESTIONS).format(a=a, b=b)
        name, arguments = "add", {"a": a, "b": b}
        call_thinking, result = add_call_thinking(a, b), str(a + b)
        result_thinking, answer = add_result_thinking(a, b), add_answer(a, b)
    tools = _tools(rng, name)
    asked = _start(rng) + [{"role": "user", "content": question}]
    calling = {"role": "assistant", "content": "", "reasoning_content": call_thinking,
               "tool_calls": [call(name, arguments)]}
    # A client sends the call back without its thinking, mostly.
    sent_back = {k: v for k, v in calling.items() if k != "reasoning_content" or rng.random() < 0.3}
    answered = [*asked, sent_back, {"role": "tool", "tool_call_id": "call_0", "content": result},
                {"role": "assistant", "content": answer, "reasoning_content": result_thinking}]
    return [([*asked, calling], tools), (answered, tools)]


def direct(rng: random.Random) -> tuple[list[dict], list[dict] | None]:
    """A question answered without a tool (with tools offered or not)."""
    kind = rng.random()
    if kind < 0.35:
        question, answer, thinking = rng.choice(GREETINGS), GREETING_ANSWER, "The user greets me."
    elif kind < 0.5:
        question, answer, thinking = rng.choice(WHO), WHO_ANSWER, "The user asks who I am."
    else:
        words = [rng.choice([made_up_city(rng), *CITIES, *HELD_OUT_CITIES * 4, *CONDITIONS])
                 for _ in range(rng.randint(1, 3))]
        question, answer, thinking = "Repeat after me: " + " ".join(words), " ".join(words), "I will repeat the words."
    tools = _tools(rng, None) if rng.random() < 0.4 else None
    messages = _start(rng) + [{"role": "user", "content": question},
                              {"role": "assistant", "content": answer, "reasoning_content": thinking}]
    return messages, tools


def sample(rng: random.Random) -> list[tuple[list[dict], list[dict] | None]]:
    """One or two examples: a round trip (60%) or a direct answer."""
    return round_trip(rng) if rng.random() < 0.6 else [direct(rng)]
