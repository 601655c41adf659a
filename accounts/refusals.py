"""The refusals of a request's key, in OpenAI's shape: 401 for a key that cannot be used,
403 for a model it may not use, 429 for a limit it has reached. Shared by authentication
(accounts.auth) and admission (accounts.limits), which both check a key."""

from __future__ import annotations

import math

from accounts.models import APIKey
from llmserver.errors import APIError


def invalid_key(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class UnknownKey(APIError):
    """The refusal of a key that does not exist (or no longer does): its request is not an
    authenticated one and leaves no usage record. A 401, or the 429 of
    :func:`too_many_unknown_keys`."""

    def __init__(self, message: str, *, status: int = 401, code: str = "invalid_api_key",
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, code=code, headers=headers or {"WWW-Authenticate": "Bearer"})


def too_many_unknown_keys(limit: int, retry_after: float) -> UnknownKey:
    """For a client address that sent more than ``limit`` wrong keys within a minute
    (accounts.auth)."""
    seconds = _whole_seconds(retry_after)
    return UnknownKey(f"Too many requests with an invalid API key from your address (at most {limit} a minute); "
                      f"retry after {seconds} seconds.", status=429, code="too_many_authentication_failures",
                      headers={"Retry-After": str(seconds)})


def key_refusal(key: APIKey) -> APIError | None:
    """The 401 for a key that is revoked or expired; None for a usable one."""
    if not key.is_active:
        return invalid_key(f"The API key {key.prefix}… has been revoked.")
    if key.is_expired:
        return invalid_key(f"The API key {key.prefix}… has expired.")
    return None


def check_model_access(key: APIKey, model_id: str, *aliases: str) -> None:
    if not key.may_use(model_id, *aliases):
        raise APIError(
            403,
            f"This API key may not use the model '{model_id}'.",
            code="model_not_allowed",
            param="model",
        )


def too_many(message: str, code: str, retry_after: float) -> APIError:
    return APIError(429, message, code=code, headers={"Retry-After": str(_whole_seconds(retry_after))})


def _whole_seconds(seconds: float) -> int:
    """Retry-After's value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
