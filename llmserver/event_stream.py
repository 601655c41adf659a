"""``EventStream``: a streamed response whose bytes the API handler sends as they come.

Django sends a ``StreamingHttpResponse`` through its wrappers: ``__aiter__``, the
``streaming_content`` getter (once more for each middleware that wraps it), the access
log's own wrapper and ``chunk_bytes``, a layer each for every chunk. A stream of
server-sent events carries a chunk a token, so ``APIHandler.send_response``
(llmserver/patches/asgi_handler.py) sends an ``EventStream``'s ``events`` itself, and
the access log learns when the stream ended from :meth:`EventStream.when_ended` instead
of wrapping it. Any other handler (the site's, Django's test client) reads the same
iterator through ``streaming_content`` as usual.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from django.http import StreamingHttpResponse


class EventStream(StreamingHttpResponse):
    def __init__(self, events: AsyncIterator[bytes], **kwargs):
        super().__init__(events, **kwargs)
        self.events = events
        self.completed = False  # every event was sent (set by the sender)
        self._when_ended: list[Callable[[bool], None]] = []

    def when_ended(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(completed)`` once, when the stream ends: after its last event,
        before the message that ends the response reaches the client (so that a client
        that has read the whole stream finds its access log line written), or, if its
        client left (``completed`` false), when the response is closed."""
        self._when_ended.append(callback)

    def ended(self) -> None:
        """The stream has ended (the sender calls this, and ``close``): the callbacks
        run, the first time only."""
        callbacks, self._when_ended = self._when_ended, []
        for callback in callbacks:
            callback(self.completed)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.ended()
