"""Training dialogues for the demo model (standard library only).

The server's test suite imports this module from the runtime venv (no torch, no
numpy) to sample fresh prompts, so keep it free of third-party imports.

Every dialogue is a list of ``{"role": ..., "content": ...}`` messages rendered
with the ChatML template in :data:`CHAT_TEMPLATE`; the model is trained on the
assistant contents (plus the closing ``<|im_end|>``) only.
"""

from __future__ import annotations

import json
import random
from typing import Iterable, Sequence

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 in the trained tokenizer

# ChatML with tools in the "Hermes" style of Qwen2.5: the tools (OpenAI tool objects,
# each as ``tojson`` writes it) in a system block, after the system prompt if there is
# one; an assistant's tool calls as <tool_call> blocks holding {"name", "arguments"}
# (arguments as an object), separated by a newline; a tool's result as a "tool" turn.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n"
    "{% endif %}<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}</tools><|im_end|>\n"
    "{% endif %}{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    # The newline between calls is an expression: as text right after a block tag,
    # Jinja's trim_blocks (on in transformers' renderer) would remove it.
    "{% if message['tool_calls'] is defined %}{% for call in message['tool_calls'] %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}<tool_call>\n"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}\n"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)

# Simple lowercase English nouns and adjectives (all distinct, letters only).
WORDS: list[str] = [
    # animals
    "tiger", "lion", "cat", "dog", "horse", "mouse", "bird", "fish", "rabbit", "bear",
    "wolf", "fox", "duck", "goat", "sheep", "cow", "frog", "snake", "whale", "shark",
    "owl", "bee", "ant", "deer", "monkey",
    # food
    "lemon", "apple", "banana", "orange", "grape", "cherry", "peach", "pear", "melon", "bread",
    "cheese", "butter", "honey", "sugar", "salt", "rice", "soup", "cake", "milk", "tea",
    "coffee", "egg", "carrot", "potato", "tomato",
    # colours
    "blue", "red", "green", "yellow", "purple", "pink", "black", "white", "brown", "gray",
    # nature
    "river", "mountain", "forest", "ocean", "lake", "island", "desert", "cloud", "rain", "snow",
    "wind", "storm", "sun", "moon", "star", "sky", "tree", "flower", "grass", "stone",
    "sand", "fire", "water", "ice", "leaf",
    # things
    "house", "door", "window", "table", "chair", "bed", "lamp", "book", "pen", "paper",
    "box", "bag", "cup", "plate", "spoon", "knife", "clock", "phone", "key", "ball",
    "car", "train", "boat", "ship", "plane", "bike", "road", "bridge", "city", "garden",
    "shoe", "hat", "coat", "shirt", "ring", "coin", "map", "rope", "candle", "mirror",
    # adjectives
    "big", "small", "tall", "short", "long", "fast", "slow", "hot", "cold", "warm",
    "soft", "hard", "happy", "sad", "quiet", "loud", "bright", "dark", "old", "new",
    "young", "rich", "clean", "dirty", "sweet", "sour", "heavy", "light", "round", "sharp",
    "calm", "brave", "kind", "lazy", "busy", "funny", "strong", "weak", "wet", "dry",
]

SYSTEM_PROMPTS: list[str] = [
    "You are a helpful assistant.",
    "You are a helpful assistant.",
    "You are a friendly assistant.",
    "You are a small demo model. Answer briefly.",
    "You are a concise assistant.",
    "Answer the user's question.",
    "You are an AI assistant running on a small server.",
]

GREETING_ANSWER = "Hello! How can I help you?"
IDENTITY_ANSWER = "I am a small demo model."
THANKS_ANSWER = "You are welcome."
FALLBACK_ANSWER = "I am sorry, I do not know."

# (user variants, assistant answer)
SMALL_TALK: list[tuple[list[str], str]] = [
    (["Hello", "Hi", "Hello!", "Hi!", "Hey", "Hi there", "Hello there", "Good morning", "hello", "hi"],
     GREETING_ANSWER),
    (["Who are you?", "What are you?", "What is your name?", "Tell me about yourself."],
     IDENTITY_ANSWER),
    (["Thank you", "Thanks", "Thank you!", "Thanks!", "Thank you very much.", "thanks"],
     THANKS_ANSWER),
    (["How are you?", "How are you today?"], "I am fine, thank you."),
    (["Goodbye", "Bye", "Goodbye!", "See you later."], "Goodbye! Have a nice day."),
    (["What can you do?", "Can you help me?", "Help"],
     "I can repeat words, add small numbers and count."),
    (["Are you a robot?", "Are you human?"], "I am a computer program."),
    (["Good night"], "Good night!"),
]

FALLBACK_QUESTIONS: list[str] = [
    "What is the capital of France?",
    "What time is it?",
    "Tell me a joke.",
    "What is the weather like today?",
    "Write a poem.",
    "Who won the game yesterday?",
    "What is the meaning of life?",
    "Explain quantum physics.",
    "How do I cook pasta?",
    "Who is the president?",
    "What is the best movie?",
    "Translate this to French.",
    "Why is the sky blue?",
    "How far away is the moon?",
    "What is 100 times 100?",
    "Can you write some code?",
]

# Extra everyday English, used only to train the tokenizer (so that text typed into a
# chat page splits into fewer pieces); the model is not trained on it.
COMMON_TEXT = """
the be to of and a in that have it for not on with he as you do at this but his by from
they we say her she or an will my one all would there their what so up out if about who get
which go me when make can like time no just him know take people into year your good some
could them see other than then now look only come its over think also back after use two how
our work first well way even new want because any these give day most us is are was were been
has had did does said made went got came took saw knew thought told asked called tried used
found gave left felt kept began seemed helped showed heard played ran moved lived believed
brought happened wrote sat stood lost paid met included continued set learned changed led
understood watched followed stopped created spoke read spent grew opened walked won offered
remembered loved considered appeared bought waited served died sent expected built stayed fell
cut reached killed remained suggested raised passed sold required reported decided pulled
question answer problem number world school state family student group country point home
hand part place case week company system program government night thing word story fact
month lot right study job business issue side kind head service friend father power hour
game line end member law idea body information back parent face others level office door
health person art war history party result change morning reason research girl guy moment air
teacher force education please hello thanks sorry yes maybe always never sometimes often
today tomorrow yesterday here where why which while before during without between under
again very really still something anything nothing everything someone everyone please write
explain tell show help find give summarize translate list describe compare example simple
python code function server model request response message token stream test error value
"""

MAX_ADD = 20
MAX_COUNT = 200


# ---------------------------------------------------------------- task helpers

def _as_words(words: str | Iterable[str]) -> list[str]:
    if isinstance(words, str):
        return words.split()
    return list(words)


def repeat_prompt(words: str | Iterable[str]) -> str:
    """``"Repeat after me: tiger lemon"`` for ``["tiger", "lemon"]`` (or ``"tiger lemon"``)."""
    return "Repeat after me: " + " ".join(_as_words(words))


def repeat_answer(words: str | Iterable[str]) -> str:
    return " ".join(_as_words(words))


# Markup the model repeats verbatim (for the chat page's XSS test: a *model answer*
# holding HTML must be shown as text). Each template has one ``{}`` slot for 1-2 words
# of WORDS (separated by a space); the tokenizer and the model see these strings as is.
MARKUP_TEMPLATES: list[str] = [
    '<script>alert("{}")</script>',
    '<img src=x onerror=alert("{}")>',
    "<b>{}</b>",
    "<i>{}</i>",
]
MARKUP_MAX_WORDS = 2


def markup_text(template: str, words: str | Iterable[str]) -> str:
    """``template`` (one of :data:`MARKUP_TEMPLATES`) with its ``{}`` slot filled by
    ``words`` joined by spaces: ``markup_text(MARKUP_TEMPLATES[0], "tiger")`` is
    ``'<script>alert("tiger")</script>'``."""
    return template.replace("{}", " ".join(_as_words(words)))


def markup_repeat(template: str, words: str | Iterable[str]) -> tuple[str, str]:
    """``(prompt, answer)`` for the "repeat markup" task: the user says
    ``Repeat after me: <MARKUP>`` and the model answers exactly ``<MARKUP>``, where
    MARKUP is ``template`` (one of :data:`MARKUP_TEMPLATES`) filled with ``words``
    (1-2 words of :data:`WORDS`, a list or a space-separated string)::

        >>> markup_repeat('<img src=x onerror=alert("{}")>', ["tiger"])
        ('Repeat after me: <img src=x onerror=alert("tiger")>', '<img src=x onerror=alert("tiger")>')
    """
    text = markup_text(template, words)
    return repeat_prompt([text]), text


def random_markup(rng: random.Random, k: int | None = None) -> tuple[str, list[str]]:
    """A random ``(template, words)`` for :func:`markup_repeat`: a template of
    :data:`MARKUP_TEMPLATES` and ``k`` (default 1 or 2) words drawn from WORDS."""
    template = rng.choice(MARKUP_TEMPLATES)
    if k is None:
        k = rng.randint(1, MARKUP_MAX_WORDS)
    return template, [rng.choice(WORDS) for _ in range(k)]


def addition_prompt(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def addition_answer(a: int, b: int) -> str:
    return f"{a} plus {b} is {a + b}."


def count_prompt(n: int) -> str:
    return f"Count from 1 to {n}."


def count_answer(n: int) -> str:
    return " ".join(str(i) for i in range(1, n + 1))


def random_words(rng: random.Random, k: int | None = None) -> list[str]:
    """1-3 words drawn independently from WORDS (repeats possible)."""
    if k is None:
        k = rng.randint(1, 3)
    return [rng.choice(WORDS) for _ in range(k)]


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


def tool_call_text(name: str, arguments: dict) -> str:
    """An assistant's call as the template writes it (and the model answers)::

        <tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris"}}
        </tool_call>
    """
    return f"<tool_call>\n{_tojson({'name': name, 'arguments': arguments})}\n</tool_call>"


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


# ------------------------------------------------------------------ rendering

def _tojson(obj) -> str:
    """The template's ``tojson``: ``", "`` and ``": "``, keys in order, non-ASCII as is."""
    return json.dumps(obj, ensure_ascii=False)


def render_parts(messages: Sequence[dict], add_generation_prompt: bool = False,
                 tools: Sequence[dict] | None = None) -> list[tuple[str, int | None]]:
    """:data:`CHAT_TEMPLATE` rendered in pieces ``(text, index)``: ``index`` is the
    position in ``messages`` of the assistant message whose answer (content, tool calls
    and the closing ``<|im_end|>``) the piece is, None for prompt text."""
    parts: list[tuple[str, int | None]] = []
    if tools:
        head = f"{IM_START}system\n"
        if messages and messages[0]["role"] == "system":
            head += f"{messages[0]['content']}\n"
        head += "<tools>\n" + "".join(_tojson(tool) + "\n" for tool in tools) + f"</tools>{IM_END}\n"
        parts.append((head, None))
    for i, m in enumerate(messages):
        if tools and i == 0 and m["role"] == "system":
            continue
        body = m.get("content") or ""
        if "tool_calls" in m:
            body += "\n".join(tool_call_text(call["function"]["name"], call["function"]["arguments"])
                              for call in m["tool_calls"])
        if m["role"] == "assistant":
            parts += [(f"{IM_START}assistant\n", None), (body + IM_END, i), ("\n", None)]
        else:
            parts.append((f"{IM_START}{m['role']}\n{body}{IM_END}\n", None))
    if add_generation_prompt:
        parts.append((f"{IM_START}assistant\n", None))
    return parts


def render_chatml(messages: Sequence[dict], add_generation_prompt: bool = False,
                  tools: Sequence[dict] | None = None) -> str:
    """Python equivalent of :data:`CHAT_TEMPLATE` (with ``tools``, OpenAI tool objects,
    and assistant ``tool_calls`` whose arguments are objects)."""
    return "".join(text for text, _ in render_parts(messages, add_generation_prompt, tools))


def assistant_text(message: dict) -> str:
    """What the model writes for an assistant message (content, then its calls)."""
    text = message.get("content") or ""
    if "tool_calls" in message:
        text += "\n".join(tool_call_text(c["function"]["name"], c["function"]["arguments"])
                          for c in message["tool_calls"])
    return text


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
