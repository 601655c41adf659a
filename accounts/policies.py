"""Who may make a request: small async policies a view or consumer names, in DRF's spirit
(``permission_classes``), that run on the event loop.

A policy answers with the request's :class:`Credential` (the API key it acts for, None
when keys are off and the policy admits anyone) or raises the APIError that refuses it
(401, 403, 429). Views name theirs as ``policy = BearerKey()``; the chat consumer uses
:class:`ChatSession`. Authentication itself (the lookup, the wrong-key throttle) is
``accounts.auth.authenticate``, the one way a key is read.
"""

from __future__ import annotations

from typing import NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model

from accounts.auth import authenticate
from accounts.books import books
from accounts.models import APIKey
from accounts.refusals import key_refusal
from llmserver.errors import AdminKeyRequired, UserInactive


class Credential(NamedTuple):
    """The key a request acts for (None: keys are off), and whether it was read from the
    database for this request (else it came from this process's known keys, and the
    request's admission reads it again)."""

    key: APIKey | None
    checked: bool = True


NO_KEY = Credential(None)


class Anyone:
    """A public endpoint."""

    async def authorize(self, request) -> Credential:
        return NO_KEY


class BearerKey:
    """``Authorization: Bearer <key>``, required when ``REQUIRE_API_KEY`` is on; read from
    the database. ``known=True``: a key this process saw valid is taken without a read,
    for requests whose admission reads it anyway (generation)."""

    def __init__(self, *, known: bool = False):
        self.known = known

    async def authorize(self, request) -> Credential:
        if not settings.REQUIRE_API_KEY:
            return NO_KEY
        return Credential(await authenticate(request, fresh=not self.known), not self.known)


class AdminKey(BearerKey):
    """A key with the admin flag (anyone when keys are off)."""

    refusal = "Managing models needs an API key with the admin flag."

    async def authorize(self, request) -> Credential:
        credential = await super().authorize(request)
        if credential.key is not None and not credential.key.is_admin:
            raise AdminKeyRequired(self.refusal)
        return credential


class MetricsAccess(AdminKey):
    """A client whose address is in ``METRICS_ALLOWED_IPS``, or an admin key."""

    refusal = "The metrics need an API key with the admin flag, or a client address in METRICS_ALLOWED_IPS."

    async def authorize(self, request) -> Credential:
        if request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS:
            return NO_KEY
        return await super().authorize(request)


class ChatSession:
    """The chat page's socket: its logged-in user's chat key, read afresh for every turn,
    so that a revoked key, changed limits or a user deactivated since the socket opened
    apply at once. 401 ``user_inactive`` when the user is no longer active."""

    async def authorize(self, user) -> Credential:
        key = await books.call(_chat_key_of_active_user, user.pk)
        if key is None:
            raise UserInactive("Your account has been deactivated.")
        refusal = key_refusal(key)
        if refusal is not None:
            raise refusal
        return Credential(key)


def _chat_key_of_active_user(user_id: int) -> APIKey | None:
    """The user's chat key, or None if the user is no longer active (or exists)."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    return APIKey.objects.chat_key_for(user) if user is not None else None
