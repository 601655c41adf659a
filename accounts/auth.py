"""API-key authentication: the one way a key is looked up.

``Authorization: Bearer sk-...`` → the key's SHA-256 is looked up (indexed), compared in
constant time, and the key must be active and unexpired. Every failure is the same 401
``invalid_api_key`` (the message says which form of failure, never which keys exist).

A revocation or a limit change made in any process takes effect on the next request
everywhere, and no request pays a database round trip for it alone:

- A generation request takes a key that passed here before from this process's
  :data:`known_keys` and goes on to admission, whose transaction reads the key's row
  anyway and checks it again (active, unexpired, same secret, model allowed; see
  ``accounts.limits.admit``). If anything refuses such a request before admission (a
  bad body, an unknown model, ...), the view looks the key up afresh first, so a
  revoked key still gets its 401 rather than the other error.
- Every other request (``/v1/models``) looks the key up in the database, and marks it
  used (``last_used_at``), as admission does for the others.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from datetime import datetime

from django.utils import timezone

from accounts.books import books
from accounts.models import LAST_USED_RESOLUTION, APIKey, hash_secret
from accounts.refusals import UnknownKey, invalid_key, key_refusal

MAX_KEY_LENGTH = 256


def _bearer_secret(header: str) -> str:
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if not header.strip():
        raise invalid_key(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    if scheme.lower() != "bearer" or not secret:
        raise invalid_key("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
    if len(secret) > MAX_KEY_LENGTH or not secret.isascii() or not secret.isprintable():
        raise invalid_key("Incorrect API key provided.")
    return secret


def _masked(secret: str) -> str:
    return f"{secret[:6]}***{secret[-4:]}" if len(secret) > 12 else "***"


class KnownKeys:
    """Keys that passed authentication in this process, by digest: at most ``size``, the
    least recently used dropped first. A snapshot, never trusted alone (see the module
    docstring); only keys that were valid when read are kept."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._keys: OrderedDict[str, APIKey] = OrderedDict()

    def get(self, digest: str) -> APIKey | None:
        key = self._keys.get(digest)
        if key is not None:
            self._keys.move_to_end(digest)
        return key

    def remember(self, key: APIKey) -> None:
        self._keys[key.hashed_secret] = key
        self._keys.move_to_end(key.hashed_secret)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def forget(self, digest: str) -> None:
        self._keys.pop(digest, None)


known_keys = KnownKeys()


async def authenticate(request, *, fresh: bool = True) -> APIKey:
    """The APIKey of a request, or APIError 401. ``fresh=False`` accepts a key this
    process has already seen valid, without a database lookup; the caller must then have
    it checked again (admission does)."""
    secret = _bearer_secret(request.headers.get("Authorization", ""))
    digest = hash_secret(secret)
    key = None if fresh else known_keys.get(digest)
    if key is None:
        key = await books.call(_key_with_digest, digest)
    # The lookup is by digest; comparing again in constant time costs nothing and keeps
    # the check correct even if the lookup ever becomes approximate (e.g. by prefix).
    if key is None or not secrets.compare_digest(key.hashed_secret, digest):
        known_keys.forget(digest)
        raise UnknownKey(f"Incorrect API key provided: {_masked(secret)}.")
    refusal = key_refusal(key)
    if refusal is not None:
        known_keys.forget(digest)
        raise refusal
    known_keys.remember(key)
    return key


_KEY_BY_DIGEST = f"SELECT * FROM {APIKey._meta.db_table} WHERE hashed_secret = %s"


def _key_with_digest(digest: str, now: datetime | None = None) -> APIKey | None:
    """The key whose secret has ``digest``, if any; a usable one marked used at ``now``
    (every authenticated request is a use, not only those admission sees, which marks
    them too), written only if its last use is older than LAST_USED_RESOLUTION."""
    # A raw query: a third of the CPU of .filter().first(), on every request.
    key = next(iter(APIKey.objects.raw(_KEY_BY_DIGEST, [digest])), None)
    if key is not None and key_refusal(key) is None:
        now = now or timezone.now()
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
    return key
