"""What the chat page tells a person whose turn is refused.

The API's refusals (accounts.refusals, accounts.limits) speak to a program holding a key:
"The API key sk-… has been revoked", "This API key has reached its limit of 1 requests
per minute", with the wait in a ``Retry-After`` header. A person on the chat page never
saw a key and reads no headers: the chat socket says the same in their words, with the
wait in the sentence (and, for the page, in the frame's ``retry_after``). The codes stay
the API's, so the usage records and the page tell the refusals apart as before.
"""

from __future__ import annotations

import math

from accounts.models import APIKey
from llmserver.errors import (APIError, CostBudgetExceeded, KeyConcurrencyLimit, RequestsPerMinuteLimit,
                              ServerConcurrencyLimit, TokenBudgetExceeded, TokensPerMinuteLimit)

REVOKED = "Your chat access has been revoked or has expired. Ask an administrator to restore it."


def for_person(exc: APIError, key: APIKey | None) -> APIError:
    """``exc`` as the chat page's user should read it; ``key`` is their chat key, its
    limits as admission read them."""
    if exc.status == 401:
        return exc.reworded(REVOKED, headers={})
    if exc.status == 429:
        message = _too_many(exc, key, retry_after(exc) or 1)
        if message:
            return exc.reworded(message)
    return exc


def retry_after(exc: APIError) -> int | None:
    """The seconds of ``exc``'s ``Retry-After``, if it has one."""
    value = exc.headers.get("Retry-After")
    return int(value) if value is not None else None


def _too_many(exc: APIError, key: APIKey | None, seconds: int) -> str | None:
    wait = f"try again in {duration(seconds)}."
    if isinstance(exc, RequestsPerMinuteLimit):
        return f"You have sent too many messages in the last minute; {wait}"
    if isinstance(exc, TokensPerMinuteLimit):
        return f"Your messages have used too many tokens in the last minute; {wait}"
    if isinstance(exc, TokenBudgetExceeded):
        if key is not None and key.token_budget is not None:
            period = key.get_budget_period_display().lower()
            return f"You have used all {plural(key.token_budget, 'token')} you may use per {period}; {wait}"
        return f"You have used all the tokens you may use for now; {wait}"
    if isinstance(exc, CostBudgetExceeded):
        return f"You have used all you may spend for now; {wait}"
    if isinstance(exc, KeyConcurrencyLimit):
        limit = key.max_concurrency if key is not None else None
        if limit == 1:
            return ("You already have an answer being written, and you may have only one at a time; "
                    "wait for it to finish or stop it, then try again.")
        return (f"You already have {limit or 'several'} answers being written, as many as you may have at a time; "
                "wait for one to finish or stop it, then try again.")
    if isinstance(exc, ServerConcurrencyLimit):
        return f"The server is busy with other people's messages; {wait}"
    return None


def duration(seconds: int) -> str:
    """``seconds`` in the largest unit of which there are at least two, rounded up:
    "1 second", "119 seconds", "2 minutes", "5 hours", "3 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            return plural(math.ceil(seconds / size), unit)
    return plural(seconds, "second")


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
