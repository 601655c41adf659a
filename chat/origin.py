"""Who may open the chat socket: a page of this very site, or of an origin the settings
trust. A browser sends the session cookie with a WebSocket handshake whatever page opens
it, and a socket is not bound by the same-origin policy, so without this check any page
the user visits (another port on the same host included) could chat as them.

The check is the one Django's CSRF protection makes for a form's ``Origin``: the origin
must equal the one the handshake was sent to (its scheme, its ``Host`` header, which
holds the host and port, one of ``ALLOWED_HOSTS``), or be one of ``CSRF_TRUSTED_ORIGINS``
(``https://*.example.com`` trusting the subdomains). The scheme is ``https`` when the
handshake came over TLS, or through a proxy trusted to say so (``SECURE_PROXY_SSL_HEADER``,
set by ``TRUST_X_FORWARDED_PROTO``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain


class SameOriginOnly:
    """ASGI middleware for WebSockets: refuses the handshake (HTTP 403) unless its
    ``Origin`` is the page's own or a trusted one."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def origin_allowed(scope) -> bool:
    headers = _headers(scope)
    origin = headers.get("origin", "").lower()
    if not origin:
        return False
    own = _own_origin(scope, headers)
    return (own is not None and origin == own) or _trusted(origin)


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope.get("headers", [])}


def _own_origin(scope, headers: dict[str, str]) -> str | None:
    """The origin of the page that may open this socket: the handshake's scheme and
    ``Host``; None for a host not in ``ALLOWED_HOSTS``."""
    host = headers.get("host", "").lower()
    domain, _ = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:  # as Django's HttpRequest.get_host()
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    secure = scope.get("scheme") == "wss" or _proxy_says_https(headers)
    return f"{'https' if secure else 'http'}://{host}"


def _proxy_says_https(headers: dict[str, str]) -> bool:
    """As Django's HttpRequest.is_secure() reads SECURE_PROXY_SSL_HEADER."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    meta_name, secure_value = proxy_header
    name = meta_name.removeprefix("HTTP_").replace("_", "-").lower()
    value = headers.get(name)
    return value is not None and value.split(",", 1)[0].strip() == secure_value


def _trusted(origin: str) -> bool:
    trusted = [entry.lower() for entry in settings.CSRF_TRUSTED_ORIGINS]
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == pattern.scheme and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in map(urlsplit, trusted) if "*" in pattern.netloc
    )
