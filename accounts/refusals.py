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
    """The 401 for a key that does not exist (or no longer does): its request is not an
    authenticated one and leaves no usage record."""

    def __init__(self, message: str):
        super().__init__(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


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
    return APIError(429, message, code=code, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
