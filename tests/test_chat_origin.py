"""Which pages may open the chat socket with a logged-in user's cookie: only the site's
own origin (scheme, host and port, as the handshake's Host and scheme say) and the
configured trusted origins. Driven in-process through the ASGI application Daphne serves
for WebSockets (chat.routing.websocket_application, mounted by llmserver.asgi)."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from chat.routing import websocket_application
from tests.conftest import make_user

HOST = "127.0.0.1:8821"  # the server, as the browser addressed it


@pytest.fixture
def session_cookie(live_db) -> str:
    client = Client()
    client.force_login(make_user("origin"))
    return client.cookies["sessionid"].value


async def handshake(session_cookie: str, origin: str, *extra: tuple[bytes, bytes], scheme: str = "ws",
                    host: str = HOST) -> str:
    """"opened", or "refused" when the application closed the socket before accepting it
    (Daphne then answers the handshake with a 403) with the close code of an origin
    refusal (a session refusal closes with 4401)."""
    communicator = WebsocketCommunicator(websocket_application, "/ws/chat", headers=[
        (b"host", host.encode()), (b"origin", origin.encode()), (b"cookie", f"sessionid={session_cookie}".encode()),
        *extra])
    communicator.scope["scheme"] = scheme
    opened, code = await communicator.connect(timeout=10)
    if opened:
        await communicator.disconnect()
        return "opened"
    assert code == 1000, code
    return "refused"


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:5555",   # the same host, another port
    "https://127.0.0.1:8821",  # the same host and port, another scheme
    "http://localhost:8821",   # another host name for the same server
])
async def test_it_refuses_a_page_of_another_origin_with_the_users_session(session_cookie, origin):
    assert await handshake(session_cookie, origin) == "refused"


async def test_it_opens_for_a_page_of_its_own_origin(session_cookie):
    assert await handshake(session_cookie, "http://127.0.0.1:8821") == "opened"


@override_settings(CSRF_TRUSTED_ORIGINS=["https://chat.example.com", "https://*.example.org"])
@pytest.mark.parametrize("origin", ["https://chat.example.com", "https://team.example.org"])
async def test_it_opens_for_a_configured_trusted_origin(session_cookie, origin):
    assert await handshake(session_cookie, origin) == "opened"


@override_settings(CSRF_TRUSTED_ORIGINS=["https://chat.example.com"])
async def test_a_trusted_origin_is_trusted_with_its_scheme_only(session_cookie):
    assert await handshake(session_cookie, "http://chat.example.com") == "refused"


async def test_cors_origins_do_not_open_it(session_cookie, settings):
    # CORS_ORIGINS lets other sites call the API with a key, not use a person's session.
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    assert await handshake(session_cookie, "https://app.example.com") == "refused"


async def test_over_tls_its_own_origin_is_https(session_cookie):
    assert await handshake(session_cookie, "https://127.0.0.1:8821", scheme="wss") == "opened"
    assert await handshake(session_cookie, "http://127.0.0.1:8821", scheme="wss") == "refused"


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))  # TRUST_X_FORWARDED_PROTO=true
async def test_behind_a_trusted_tls_proxy_its_own_origin_is_https(session_cookie):
    forwarded = (b"x-forwarded-proto", b"https")
    assert await handshake(session_cookie, "https://127.0.0.1:8821", forwarded) == "opened"
    assert await handshake(session_cookie, "http://127.0.0.1:8821", forwarded) == "refused"


async def test_an_untrusted_forwarded_proto_is_ignored(session_cookie):
    assert await handshake(session_cookie, "https://127.0.0.1:8821", (b"x-forwarded-proto", b"https")) == "refused"


async def test_a_host_not_in_allowed_hosts_has_no_own_origin(session_cookie):
    assert await handshake(session_cookie, "http://evil.example.com", host="evil.example.com") == "refused"
