"""API-key authentication: the one way a key is looked up.

``Authorization: Bearer sk-...`` → the key's SHA-256 is looked up (indexed), compared in
constant time, and the key must be active and unexpired. Every failure is the same 401
``invalid_api_key`` (the message says which form of failure, never which keys exist).
The key is read from the database on every request, so a revocation or a limit change
made in any process takes effect on the next request everywhere.
"""

from __future__ import annotations

import secrets

from accounts.books import books
from accounts.models import APIKey, hash_secret
from llmserver.errors import APIError

MAX_KEY_LENGTH = 256


def _invalid(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _bearer_secret(header: str) -> str:
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if not header.strip():
        raise _invalid(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    if scheme.lower() != "bearer" or not secret:
        raise _invalid("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
    if len(secret) > MAX_KEY_LENGTH or not secret.isascii() or not secret.isprintable():
        raise _invalid("Incorrect API key provided.")
    return secret


def _masked(secret: str) -> str:
    return f"{secret[:6]}***{secret[-4:]}" if len(secret) > 12 else "***"


async def authenticate(request) -> APIKey:
    """The APIKey of a request, or APIError 401."""
    secret = _bearer_secret(request.headers.get("Authorization", ""))
    digest = hash_secret(secret)
    key = await books.call(_key_with_digest, digest)
    # The lookup is by digest; comparing again in constant time costs nothing and keeps
    # the check correct even if the lookup ever becomes approximate (e.g. by prefix).
    if key is None or not secrets.compare_digest(key.hashed_secret, digest):
        raise _invalid(f"Incorrect API key provided: {_masked(secret)}.")
    if not key.is_active:
        raise _invalid(f"The API key {key.prefix}… has been revoked.")
    if key.is_expired:
        raise _invalid(f"The API key {key.prefix}… has expired.")
    return key


_KEY_BY_DIGEST = f"SELECT * FROM {APIKey._meta.db_table} WHERE hashed_secret = %s"


def _key_with_digest(digest: str) -> APIKey | None:
    # A raw query: a third of the CPU of .filter().first(), on every request.
    return next(iter(APIKey.objects.raw(_KEY_BY_DIGEST, [digest])), None)


def check_model_access(key: APIKey, model_id: str) -> None:
    if not key.may_use(model_id):
        raise APIError(
            403,
            f"This API key may not use the model '{model_id}'.",
            code="model_not_allowed",
            param="model",
        )
