"""The chat page's refusals in a person's words (chat.refusals): the API's 401 and 429s,
reworded with the wait in the sentence; the codes and Retry-After kept."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import APIKey
from accounts.refusals import invalid_key, too_many
from chat.refusals import duration, for_person
from llmserver.errors import InvalidValue


def chat_key(**limits) -> APIKey:
    return APIKey(name="Chat: ann", **limits)


@pytest.mark.parametrize("code, retry_after, message, header", [
    ("requests_per_minute_limit", 42.2,
     "You have sent too many messages in the last minute; try again in 43 seconds.", "43"),
    ("requests_per_minute_limit", 0.4,
     "You have sent too many messages in the last minute; try again in 1 second.", "1"),
    ("tokens_per_minute_limit", 17,
     "Your messages have used too many tokens in the last minute; try again in 17 seconds.", "17"),
    ("server_concurrency_limit", 1,
     "The server is busy with other people's messages; try again in 1 second.", "1"),
])
def test_a_per_minute_or_server_limit_says_when_to_try_again(code, retry_after, message, header):
    refusal = for_person(too_many("This API key has reached its limit.", code, retry_after), chat_key())
    assert (refusal.status, refusal.message, refusal.code, refusal.type) == (429, message, code, "rate_limit_error")
    assert refusal.headers == {"Retry-After": header}


def test_a_spent_budget_names_it_and_when_it_renews():
    key = chat_key(token_budget=5000, budget_period="day")
    refusal = for_person(too_many("This API key has used its budget of 5000 tokens per day.",
                                  "token_budget_exceeded", 5 * 3600 - 30), key)
    assert refusal.message == "You have used all 5,000 tokens you may use per day; try again in 5 hours."
    assert refusal.headers == {"Retry-After": "17970"}


def test_a_spent_cost_budget_says_when_it_renews():
    key = chat_key(cost_budget=Decimal("2.5"), budget_period="day")
    refusal = for_person(too_many("This API key has used its budget of 2.5 USD per day.",
                                  "cost_budget_exceeded", 2 * 3600), key)
    assert (refusal.status, refusal.code) == (429, "cost_budget_exceeded")
    assert refusal.message == "You have used all you may spend for now; try again in 2 hours."
    assert refusal.headers == {"Retry-After": "7200"}


@pytest.mark.parametrize("limit, message", [
    (1, "You already have an answer being written, and you may have only one at a time; "
        "wait for it to finish or stop it, then try again."),
    (3, "You already have 3 answers being written, as many as you may have at a time; "
        "wait for one to finish or stop it, then try again."),
])
def test_answers_in_progress_at_the_limit_say_to_wait_for_one(limit, message):
    refusal = for_person(too_many(f"This API key already has {limit} requests in flight, its limit.",
                                  "key_concurrency_limit", 1), chat_key(max_concurrency=limit))
    assert (refusal.message, refusal.code) == (message, "key_concurrency_limit")


def test_a_revoked_key_is_told_as_chat_access_taken_away():
    refusal = for_person(invalid_key("The API key sk-abc… has been revoked."), chat_key())
    assert (refusal.status, refusal.code, refusal.message, refusal.headers) == (
        401, "invalid_api_key", "Your chat access has been revoked or has expired. Ask an administrator to restore it.",
        {})


def test_other_errors_are_passed_on_as_they_are():
    error = InvalidValue("'messages' must not be empty.", param="messages")
    assert for_person(error, chat_key()) is error


@pytest.mark.parametrize("seconds, words", [
    (1, "1 second"), (59, "59 seconds"), (119, "119 seconds"), (120, "2 minutes"), (121, "3 minutes"),
    (7200, "2 hours"), (86399, "24 hours"), (172800, "2 days"), (2_592_000, "30 days"),
])
def test_a_wait_is_said_in_the_largest_unit_there_are_two_of_rounded_up(seconds, words):
    assert duration(seconds) == words
