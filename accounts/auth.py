"""API-key authentication: the one way a key is looked up.

``Authorization: Bearer sk-...`` → the key's SHA-256 is looked up (indexed), compared in
constant time, and the key must be active and unexpired. Every failure is the same 401
``invalid_api_key`` (the message says which form of failure, never which keys exist).
Wrong keys are counted per client address: past ``API_KEY_FAILURES_PER_MINUTE`` within a
minute, an address's wrong keys get 429 ``too_many_authentication_failures`` instead
(:func:`_counted`), and each is logged at WARNING.

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

import asyncio
import logging
import secrets
from collections import OrderedDict
from datetime import datetime

from django.conf import settings

from accounts.books import books
from accounts.models import LAST_USED_RESOLUTION, APIKey, hash_secret
from accounts.refusals import UnknownKey, invalid_key, key_refusal, too_many_unknown_keys
from accounts.throttle import FailureCounter
from llmserver import clock

log = logging.getLogger("llmserver.auth")

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
        raise UnknownKey("Incorrect API key provided.")
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
    """The APIKey of a request, or APIError 401 (429 for a wrong key from an address past
    API_KEY_FAILURES_PER_MINUTE: :func:`_counted`). ``fresh=False`` accepts a key this
    process has already seen valid, without a database lookup; the caller must then have
    it checked again (admission does)."""
    try:
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
    except UnknownKey as wrong:
        raise await _counted(wrong, request.META.get("REMOTE_ADDR") or "unknown") from None
    refusal = key_refusal(key)
    if refusal is not None:
        known_keys.forget(digest)
        raise refusal
    known_keys.remember(key)
    return key


# Wrong keys by client address (Daphne's REMOTE_ADDR: X-Forwarded-For's first address
# with TRUST_X_FORWARDED_FOR, so clients behind one trusted proxy are counted apart).
wrong_keys = FailureCounter("api-key-address", lambda: 60.0)


async def _counted(wrong: UnknownKey, address: str) -> UnknownKey:
    """A wrong key's refusal, counted against its client address: its 401, or past
    API_KEY_FAILURES_PER_MINUTE within a minute, 429 until that minute is over.

    Only wrong keys are refused so: a valid key is looked up and served whatever its
    address did, so that a guesser sharing an address (a NAT, an office, a proxy whose
    X-Forwarded-For is not trusted) cannot lock its other users out. A guesser then still
    learns that a key is valid by being served, as without the throttle; what makes that
    hopeless is a key's 256 random bits, not the throttle. The throttle turns a flood of
    guesses into 429s with Retry-After (which clients back off on) and says so in the log
    at WARNING (the address and the count, never the key)."""
    # In a thread: the cache may be Redis, a network round trip the event loop must not wait on.
    failures, remaining = await asyncio.to_thread(wrong_keys.add, address)
    limit = settings.API_KEY_FAILURES_PER_MINUTE
    if failures <= limit:
        log.warning("invalid API key from %s (%d of %d allowed a minute)", address, failures, limit)
        return wrong
    refusal = too_many_unknown_keys(limit, remaining)
    if failures == limit + 1:  # once a window: what follows is in the access log
        log.warning("invalid API keys from %s: more than %d within a minute; refusing them with 429 for %s s",
                    address, limit, refusal.headers["Retry-After"])
    return refusal


_KEY_BY_DIGEST = f"SELECT * FROM {APIKey._meta.db_table} WHERE hashed_secret = %s"


def _key_with_digest(digest: str, now: datetime | None = None) -> APIKey | None:
    """The key whose secret has ``digest``, if any; a usable one marked used at ``now``
    (every authenticated request is a use, not only those admission sees, which marks
    them too), written only if its last use is older than LAST_USED_RESOLUTION."""
    # A raw query: a third of the CPU of .filter().first(), on every request.
    key = next(iter(APIKey.objects.raw(_KEY_BY_DIGEST, [digest])), None)
    if key is not None and key_refusal(key) is None:
        now = now or clock.now()
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
    return key
