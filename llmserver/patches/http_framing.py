"""Twisted's HTTP channel and Daphne's request and server, made to answer in OpenAI's
error shape, to honour the request-size limit while a body is read, not after, and to
give a client a deadline for sending its request (see llmserver/patches/__init__.py for
why these are here, and the pins).

1. **Twisted's HTTP channel** (:class:`_Channel`, :class:`_ChunkedDecoder`).

   Some requests never reach Django, because Twisted refuses them while it reads them:
   headers over its limits (one line over 16 KB, or all of them together, or more than
   500), a malformed request line or ``Content-Length``, a broken chunked body. Twisted
   then writes a bare ``400 Bad Request`` without a body and hangs up, or, for a line over
   the limit, hangs up without a word: an OpenAI client sees no reason at all. Here they
   get a 431 (headers too large) or a 400 with the usual ``{"error": {...}}`` body
   (llmserver/errors.py).

   Others Twisted never refuses: it waits, for as long as bytes keep coming, or until its
   idle timeout (60 s without a byte). The channel here

   - gives a request ``REQUEST_HEADERS_TIMEOUT_SECONDS`` from its first byte to the end of
     its headers, then ``REQUEST_BODY_TIMEOUT_SECONDS`` for its body; past either, 408
     ``request_timeout`` and the connection closes (a client sending a header line every
     few seconds does not hold a connection for ever). The time between requests on a
     keep-alive connection is not counted: that is Twisted's idle timeout;
   - answers 400 at once to lines ended by a bare LF (in the headers or a chunked body's
     framing), which it would wait on for a CR LF that never comes, and to a chunk size of
     more than 16 hexadecimal digits (Twisted takes any number of them, then waits for
     that many bytes).

2. **Daphne's request** (:class:`_Request`):

   - reads a body only up to ``MAX_REQUEST_SIZE_MB``: past it (or when
     ``Content-Length``, or the chunk sizes so far, say it will be), the 413 Django would
     give is sent at once, instead of after the whole body has been taken in and spooled
     to disk;
   - gives a chunked body its length, which Django reads the body by (without one, Django
     and DRF take the body as empty and the request fails as if nothing had been sent);
   - does not parse ``multipart/form-data`` and form-encoded bodies, which Twisted does
     for every POST before the application sees it (refusing, as above, one that does
     not parse). Nothing here reads those forms: the API answers their Content-Type with
     a 415.

3. **Writes** (:meth:`_Channel._write_now`): a response's bytes go to the socket when
   Daphne writes them, as far as it takes them, instead of on the reactor's next turn.

4. **Daphne's server** (:class:`DaphneServer`, the base of ``llmserver.shutdown``'s
   ``DrainingServer``): its connections are built from the classes above, for this server
   only (nothing of Daphne's or Twisted's is rebound for the whole process). Daphne takes
   no factory or request class as an option; ``Server.run`` builds its ``HTTPFactory``
   itself, and this server's is that factory's subclass.
"""

from __future__ import annotations

import re

# daphne.server first: it installs Twisted's asyncio reactor, which must come before any
# other import of twisted.internet.reactor.
from daphne.server import Server  # isort:skip
from daphne import http_protocol  # isort:skip
from django.conf import settings
from twisted.internet import reactor, tcp
from twisted.web import http

from llmserver.errors import APIError, BadRequest, RequestHeaderTooLarge, RequestTimeout, request_too_large


# --- 1. Twisted's HTTP channel ---------------------------------------------------------

# After answering, what the client still sends is read and dropped for this long before
# the connection closes: closing with unread data makes the kernel send a reset, which
# can destroy the answer before the client has read it.
_LINGER_SECONDS = 5.0

# An LF that does not end a CR LF.
_BARE_LF = re.compile(rb"(?<!\r)\n")
# The start of a chunk-size line as far as it has arrived: at most 16 hexadecimal digits
# (a size up to 2**64 - 1), then an extension (";"), the line's end, or nothing yet.
_CHUNK_SIZE_SO_FAR = re.compile(rb"(?:[0-9A-Fa-f]{1,16}(?:[;\r]|\Z))|\Z")

_BAD_REQUEST = "Bad request: the HTTP request could not be read."
_BARE_LF_IN_HEADERS = "Bad request: the request's lines must end with CR LF, not a bare LF."
_BAD_CHUNK = ("Bad request: malformed chunked body (a chunk's size is at most 16 hexadecimal digits, "
              "and every line ends with CR LF).")


def _answer_and_close(channel, status: int, reason: bytes, body: bytes) -> None:
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason, len(body), body))
    channel.dataReceived = channel.lineReceived = channel.rawDataReceived = lambda *args: None
    channel.setTimeout(None)
    if isinstance(channel, _Channel):
        channel.answered()
    reactor.callLater(_LINGER_SECONDS, channel.transport.loseConnection)


def _answer_error(channel, reason: bytes, error: APIError) -> None:
    _answer_and_close(channel, error.status, reason, error.json())


def _bad_request(channel, message: str = _BAD_REQUEST) -> None:
    _answer_error(channel, b"Bad Request", BadRequest(message))


class _Channel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with OpenAI-shaped refusals and read deadlines (see the
    module docstring)."""

    _deadline = None  # the pending call that refuses the request being read, if one is
    _answered = False  # refused: the connection only waits to close

    # The read deadlines.

    def dataReceived(self, data):
        if self._deadline is None and not self._handlingRequest and not self._answered:
            # The first byte of a request (a keep-alive connection's idle time before it is
            # Twisted's idle timeout's business).
            self._read_within(settings.REQUEST_HEADERS_TIMEOUT_SECONDS, "headers were")
        super().dataReceived(data)
        # A line is complete only with its CR LF: an LF alone would be waited on for ever.
        if self.line_mode and not self._answered and _BARE_LF.search(self._buffer):
            _bad_request(self, _BARE_LF_IN_HEADERS)

    def lineReceived(self, line):
        if b"\n" in line:
            _bad_request(self, _BARE_LF_IN_HEADERS)
            return
        super().lineReceived(line)

    def allHeadersReceived(self):
        super().allHeadersReceived()
        if not self._answered:
            self._read_within(settings.REQUEST_BODY_TIMEOUT_SECONDS, "body was")

    def allContentReceived(self):
        self._stop_deadline()
        super().allContentReceived()

    def connectionLost(self, reason):
        self._stop_deadline()
        super().connectionLost(reason)

    def answered(self) -> None:
        self._answered = True
        self._stop_deadline()

    def _read_within(self, seconds: float, what: str) -> None:
        self._stop_deadline()
        self._deadline = self.callLater(seconds, self._too_slow, seconds, what)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, seconds: float, what: str) -> None:
        self._deadline = None
        _answer_error(self, b"Request Timeout", RequestTimeout(
            f"The request's {what} not received within {seconds:g} second{'' if seconds == 1 else 's'}."))

    # Writes.

    def write(self, data):
        self._write_now(data)

    def writeSequence(self, iovec):
        self._write_now(b"".join(iovec))

    def _write_now(self, data: bytes) -> None:
        """Send ``data`` at once, as far as the socket takes it, when nothing is queued
        before it (bytes stay in order); queue the rest as Twisted does. Twisted queues
        every write and sends it on the reactor's next turn, which costs each streamed
        chunk a writer registration, an epoll round and the writer's removal on the event
        loop (bench/results/writes-2026-12-04.md). A TLS connection writes as Twisted does."""
        transport = self.transport
        if (data and type(transport) is tcp.Server and not transport.TLS and transport.connected
                and not transport.disconnecting and not transport._writeDisconnected and not transport._tempDataLen
                and transport.offset == len(transport.dataBuffer)):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):  # else the connection is lost: the queued write finds out
                data = data[sent:]
        if data:
            transport.write(data)

    # Twisted's refusals, in OpenAI's shape.

    def _respondToBadRequestAndDisconnect(self):
        """Twisted's answer to a request it cannot read."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.lineLengthExceeded(b"")
        else:
            _bad_request(self)

    def lineLengthExceeded(self, line):
        """One header line over Twisted's limit (or all of them: above)."""
        _answer_error(self, b"Request Header Fields Too Large", RequestHeaderTooLarge(
            f"The request's headers are too large: at most {self.totalHeadersSize // 1024} KB in all."))

    def _maybeChooseTransferDecoder(self, header, data):
        chosen = super()._maybeChooseTransferDecoder(header, data)
        if chosen and type(self._transferDecoder) is http._ChunkedTransferDecoder:
            self._transferDecoder = _ChunkedDecoder(self, self.requests[-1])
        return chosen


class _ChunkedDecoder(http._ChunkedTransferDecoder):
    """Twisted's decoder of a chunked body, refusing at once what it would otherwise wait
    on: a bare LF, a chunk size of more than 16 digits, chunks adding up to more than
    ``MAX_REQUEST_SIZE_MB`` (413)."""

    def __init__(self, channel: _Channel, request: _Request):
        super().__init__(request.handleContentChunk, channel._finishRequestBody)
        self._channel, self._request = channel, request
        self._announced = 0  # the chunk sizes so far, added up

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if not _CHUNK_SIZE_SO_FAR.match(self._buffer) or self._line_ends_with_bare_lf():
            return self._refuse()
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        self._announced += self.length
        if self._announced > settings.MAX_REQUEST_SIZE_BYTES:
            self._request.refuse_too_large()
            return self._stop()
        return True

    def _dataReceived_CRLF(self) -> bool:
        if self._buffer[:1] == b"\n":
            return self._refuse()
        return super()._dataReceived_CRLF()

    def _dataReceived_TRAILER(self) -> bool:
        if self._line_ends_with_bare_lf():
            return self._refuse()
        return super()._dataReceived_TRAILER()

    def _line_ends_with_bare_lf(self) -> bool:
        end = self._buffer.find(b"\n")
        return end == 0 or (end > 0 and self._buffer[end - 1] != ord("\r"))

    def _refuse(self) -> bool:
        _bad_request(self._channel, _BAD_CHUNK)
        return self._stop()

    def _stop(self) -> bool:
        """Answered: nothing more is decoded (the channel drops what still arrives)."""
        del self._buffer[:]
        self.state = "FINISHED"
        return False


# --- 2. Daphne's request ---------------------------------------------------------------

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
            self.refuse_too_large()
            return
        super().handleContentChunk(data)

    def refuse_too_large(self) -> None:
        self._refused = True
        _answer_and_close(self.channel, 413, b"Payload Too Large", request_too_large().content)

    def requestReceived(self, command, path, version):
        if self._refused:
            return
        if self._received and not self.requestHeaders.hasHeader(b"Content-Length"):
            self.requestHeaders.setRawHeaders(b"Content-Length", [b"%d" % self._received])
        super().requestReceived(command, path, version)


# --- 4. Daphne's server ----------------------------------------------------------------

class _HTTPFactory(http_protocol.HTTPFactory):
    """Daphne's factory of HTTP connections, building them from :class:`_Channel` and
    :class:`_Request`."""

    def protocol(self) -> http._GenericHTTPChannelProtocol:
        """Twisted's ``_genericHTTPChannelProtocolFactory``, with :class:`_Channel`."""
        return http._GenericHTTPChannelProtocol(_Channel())

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)  # Daphne's sets its WebRequest
        protocol.requestFactory = _Request
        return protocol


class DaphneServer(Server):
    """Daphne's server whose HTTP connections are built by :class:`_HTTPFactory`."""

    @property
    def http_factory(self) -> _HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory) -> None:
        # Server.run builds Daphne's HTTPFactory(self) and listens with it: ours instead.
        self._http_factory = factory if isinstance(factory, _HTTPFactory) else _HTTPFactory(factory.server)
