"""Daphne's HTTP layer (Twisted's ``HTTPChannel``), made to answer in OpenAI's error shape
and to honour the request-size limit while it reads a body, not after.

Some requests never reach Django, because Twisted refuses them while it reads them:
headers over its limits (one line over 16 KB, or all of them together, or more than 500),
a malformed request line or ``Content-Length``, a broken chunked body. Twisted then
writes a bare ``400 Bad Request`` without a body and hangs up, or, for a line over the
limit, hangs up without a word: an OpenAI client sees no reason at all. Installed, they
get a 431 (headers too large) or a 400 with the usual ``{"error": {...}}`` body.

Daphne's requests (:class:`_Request`):

- read a body only up to ``MAX_REQUEST_SIZE_MB``: past it (or when ``Content-Length``
  says it will be), the 413 Django would give is sent at once, instead of after the
  whole body has been taken in and spooled to disk;
- give a chunked body its length, which Django reads the body by (without one, Django
  and DRF take the body as empty and the request fails as if nothing had been sent);
- do not parse ``multipart/form-data`` and form-encoded bodies, which Twisted does for
  every POST before the application sees it (refusing, as above, one that does not
  parse). Nothing here reads those forms: the API answers their Content-Type with a 415.
"""

from __future__ import annotations

import json

from daphne import http_protocol
from django.conf import settings
from twisted.internet import reactor
from twisted.web import http

from llmserver.errors import request_too_large

# After answering, what the client still sends is read and dropped for this long before
# the connection closes: closing with unread data makes the kernel send a reset, which
# can destroy the answer before the client has read it.
_LINGER_SECONDS = 5.0


def _answer_and_close(channel, status: int, reason: bytes, body: bytes) -> None:
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason, len(body), body))
    channel.dataReceived = channel.lineReceived = channel.rawDataReceived = lambda *args: None
    channel.setTimeout(None)
    reactor.callLater(_LINGER_SECONDS, channel.transport.loseConnection)


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


def _respond_to_bad_request(channel) -> None:
    """Twisted's answer to a request it cannot read (HTTPChannel._respondToBadRequestAndDisconnect)."""
    if channel._receivedHeaderSize > channel.totalHeadersSize:
        _header_too_large(channel)
    else:
        _answer_and_close(channel, 400, b"Bad Request", _error("Bad request: the HTTP request could not be read.",
                                                               "bad_request"))


def _header_too_large(channel, line: bytes = b"") -> None:
    """Also Twisted's ``lineLengthExceeded``: one header line over its limit."""
    _answer_and_close(channel, 431, b"Request Header Fields Too Large", _error(
        f"The request's headers are too large: at most {channel.totalHeadersSize // 1024} KB in all.",
        "request_header_too_large"))


class _Request(http_protocol.WebRequest):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parsePOSTFormSubmission = False
        self._declared_length = None
        self._received = 0
        self._refused = False  # answered 413: what else arrives is not processed

    def gotLength(self, length):
        super().gotLength(length)
        self._declared_length = length

    def handleContentChunk(self, data):
        self._received += len(data)
        if self._refused:
            return
        if max(self._received, self._declared_length or 0) > settings.MAX_REQUEST_SIZE_BYTES:
            self._refused = True
            _answer_and_close(self.channel, 413, b"Payload Too Large", request_too_large().content)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self._refused:
            return
        if self._received and not self.requestHeaders.hasHeader(b"Content-Length"):
            self.requestHeaders.setRawHeaders(b"Content-Length", [b"%d" % self._received])
        super().requestReceived(command, path, version)


def install() -> None:
    """Patch Twisted's HTTP channel and Daphne's request class (for every server in this
    process)."""
    http.HTTPChannel._respondToBadRequestAndDisconnect = _respond_to_bad_request
    http.HTTPChannel.lineLengthExceeded = _header_too_large
    http_protocol.WebRequest = _Request
