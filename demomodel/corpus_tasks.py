"""The demo model's original tasks: repeating words and markup, adding and counting, small
talk and the fallback answer (standard library only)."""

from __future__ import annotations

import random
from typing import Iterable

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
