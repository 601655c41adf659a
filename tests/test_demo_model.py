"""The shipped demo model really answers, through the HTTP API, on fresh prompts each run.

Rates required by the project: at least 95% exact for "Repeat after me" (1-3 words from
its word list), for "Repeat after me" with markup (a template of MARKUP_TEMPLATES holding
1-2 words; the chat page's XSS test relies on it) and for "What is A plus B?"
(0 <= A, B <= 20), and every answer ending with EOS (finish_reason "stop") well before
32 tokens.
"""

import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from demomodel.corpus import (
    MARKUP_TEMPLATES, WORDS, addition_answer, addition_prompt, markup_repeat, repeat_prompt,
)
from tests.conftest import MODEL_ID, bearer

SAMPLES = 200  # enough that a model right 98% of the time almost never fails the 95% bar
rng = random.Random()  # fresh prompts every run; the seed is printed on failure
SEED = rng.randrange(2**32)
rng.seed(SEED)


def ask_all(server, api_key, prompts):
    def ask(prompt):
        with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(api_key)) as client:
            return client.post("/v1/chat/completions", json={
                "model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "temperature": 0}).json()
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, prompts))


def report(cases, answers):
    wrong = [(expected, a["choices"][0]["message"]["content"]) for (expected, _), a in zip(cases, answers)
             if a["choices"][0]["message"]["content"] != expected]
    return len(wrong), f"seed {SEED}; wrong: {wrong[:10]}"


def test_it_repeats_one_to_three_words_at_least_95_percent_of_the_time(server, api_key):
    cases = []
    for _ in range(SAMPLES):
        words = rng.sample(WORDS, rng.randint(1, 3))
        cases.append((" ".join(words), repeat_prompt(words)))
    answers = ask_all(server, api_key, [prompt for _, prompt in cases])
    failures, detail = report(cases, answers)
    assert failures <= SAMPLES * 0.05, detail
    assert_stops_early(answers)


def test_it_adds_two_numbers_up_to_20_at_least_95_percent_of_the_time(server, api_key):
    cases = []
    for _ in range(SAMPLES):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        cases.append((addition_answer(a, b), addition_prompt(a, b)))
    answers = ask_all(server, api_key, [prompt for _, prompt in cases])
    failures, detail = report(cases, answers)
    assert failures <= SAMPLES * 0.05, detail
    assert_stops_early(answers)


def test_it_repeats_markup_verbatim_at_least_95_percent_of_the_time(server, api_key):
    cases = []
    for _ in range(SAMPLES):
        prompt, answer = markup_repeat(rng.choice(MARKUP_TEMPLATES), rng.sample(WORDS, rng.randint(1, 2)))
        cases.append((answer, prompt))
    answers = ask_all(server, api_key, [prompt for _, prompt in cases])
    failures, detail = report(cases, answers)
    assert failures <= SAMPLES * 0.05, detail
    assert_stops_early(answers)


def assert_stops_early(answers):
    assert [a["choices"][0]["finish_reason"] for a in answers] == ["stop"] * len(answers)
    assert max(a["usage"]["completion_tokens"] for a in answers) < 16
