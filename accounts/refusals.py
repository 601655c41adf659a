"""The refusals of a request's key, in OpenAI's shape: 401 for a key that cannot be used,
403 for a model it may not use, 429 for a limit it has reached. Shared by authentication
(accounts.auth) and admission (accounts.limits), which both check a key."""

from __future__ import annotations

import math

from accounts.models import APIKey
from llmserver.errors import APIError, Code, InvalidAPIKey, ModelNotAllowed, TooManyAuthenticationFailures, error_class

# Where a 401 tells the client how to authenticate.
_BEARER = {"WWW-Authenticate": "Bearer"}


def invalid_key(message: str) -> InvalidAPIKey:
    return InvalidAPIKey(message, headers=_BEARER)


class UnknownKey(InvalidAPIKey):
    """The refusal of a key that does not exist (or no longer does): its request is not an
    authenticated one and leaves no usage record. A 401, or (:class:`TooManyUnknownKeys`)
    the 429 of :func:`too_many_unknown_keys`."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers=_BEARER if headers is None else headers)


class TooManyUnknownKeys(TooManyAuthenticationFailures, UnknownKey):
    """The 429 of an address that sent too many wrong keys: a
    too_many_authentication_failures refusal (its status and code come first), and an
    :class:`UnknownKey` in that it leaves no usage record."""


def too_many_unknown_keys(limit: int, retry_after: float) -> UnknownKey:
    """For a client address that sent more than ``limit`` wrong keys within a minute
    (accounts.auth)."""
    seconds = _whole_seconds(retry_after)
    return TooManyUnknownKeys(f"Too many requests with an invalid API key from your address (at most {limit} a minute); "
                              f"retry after {seconds} seconds.", headers={"Retry-After": str(seconds)})


def key_refusal(key: APIKey) -> InvalidAPIKey | None:
    """The 401 for a key that is revoked or expired; None for a usable one."""
    if not key.is_active:
        return invalid_key(f"The API key {key.prefix}… has been revoked.")
    if key.is_expired:
        return invalid_key(f"The API key {key.prefix}… has expired.")
    return None


def check_model_access(key: APIKey, model_id: str, *aliases: str) -> None:
    if not key.may_use(model_id, *aliases):
        raise ModelNotAllowed(f"This API key may not use the model '{model_id}'.", param="model")


def too_many(message: str, code: Code | str, retry_after: float) -> APIError:
    """The 429 of ``code``'s limit, asking the client to wait ``retry_after`` seconds."""
    cls = error_class(code)
    if cls.status != 429:
        raise ValueError(f"{cls.code} is no limit's refusal")
    return cls(message, headers={"Retry-After": str(_whole_seconds(retry_after))})


def _whole_seconds(seconds: float) -> int:
    """Retry-After's value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
