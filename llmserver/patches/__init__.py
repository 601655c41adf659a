"""Every place llmserver overrides, copies or relies on the non-public code of Twisted,
Daphne and Django, held together in this package:

- ``http_framing``: Twisted's HTTP channel and Daphne's request and server, so that
  requests Twisted refuses while reading them are answered in OpenAI's error shape, a
  request has deadlines for its headers and its body, a body over the size limit is
  refused while it is read, and a response's bytes are sent when written, not on the
  reactor's next turn;
- ``asgi_handler``: ``APIHandler``, Django's ASGI handler without its per-request thread
  hops, for the API paths.

None of the three has a public API for what these do; each module says what it replaces
and why. They were written for the versions in :data:`WRITTEN_FOR` (those pinned in
requirements.txt), and :data:`UPSTREAM` records a SHA-256 of the source
(``inspect.getsource``) of each upstream function they replace, copy, extend or rely on,
with what to re-check when it changes: tests/test_patches.py fails when an upgrade changes
one of them, and when requirements.txt pins other versions than these.

This ``__init__`` imports nothing, so that importing one of the two modules does not
import the other's framework.
"""

# The distributions this package was written for: those pinned in requirements.txt.
WRITTEN_FOR = {"Twisted": "26.10.0", "daphne": "4.2.3", "Django": "5.2.19"}

# The upstream functions this package (and llmserver.shutdown.DrainingServer) replaces,
# copies, extends or relies on: the SHA-256 of ``inspect.getsource`` of each, and what to
# re-check when it changes.
UPSTREAM = {
    "twisted.web.http.HTTPChannel._respondToBadRequestAndDisconnect": (
        "c7ccc0f4450a7d6b1fc41cf79bc17092c2331c2ef812b94403e805258ba7ff48",
        "_Channel._respondToBadRequestAndDisconnect replaces it: is it still how Twisted refuses a "
        "request it cannot read, and _receivedHeaderSize how it counts the headers?"),
    "twisted.web.http.HTTPChannel.lineLengthExceeded": (
        "0cb67c8ef953bcb8d412ad1eba052e6ee6f486deae691ab5fcbe27776423d5e8",
        "_Channel.lineLengthExceeded replaces it: is it still called for a header line over the limit?"),
    "twisted.web.http.HTTPChannel.dataReceived": (
        "152316e9ce5021097a7238455eaf86116e08a40b198b708c2aa01b4a4cb5e238",
        "_Channel.dataReceived extends it: do _handlingRequest, line_mode and _buffer still mean what it "
        "reads them for?"),
    "twisted.web.http.HTTPChannel.lineReceived": (
        "b77ec6f21116e82766439c07df79063430a8e963b4d1cfe8460ceb1ddc7b2c37",
        "_Channel.lineReceived extends it: does Twisted still hand it lines split at LF (a bare LF left "
        "in the line)?"),
    "twisted.web.http.HTTPChannel.allHeadersReceived": (
        "979a9a8410f41ad93bf8490700f9893dcf43bf8fb91af01b6bd5770910c28ebe",
        "_Channel.allHeadersReceived extends it: still called once the headers are read, before the body?"),
    "twisted.web.http.HTTPChannel.allContentReceived": (
        "9f7c990696871a9291cba3443c5a590dfc7e5a9a0904278e04ad26508b907d06",
        "_Channel.allContentReceived extends it: still called once the body is read?"),
    "twisted.web.http.HTTPChannel._maybeChooseTransferDecoder": (
        "3b92d266a3c7bd2cfc596313888c2496b6d6982516e90022f372a348986089cd",
        "_Channel._maybeChooseTransferDecoder swaps the chunked decoder it chooses: still set as "
        "_transferDecoder, for requests[-1]?"),
    "twisted.web.http.HTTPChannel._finishRequestBody": (
        "42d008b78aff699a6f50489df8a3bebd05e38b62d52e5e80fcd1fef7ab2b1ac6",
        "_ChunkedDecoder is built with it as its finish callback, as Twisted's own is"),
    "twisted.web.http.HTTPChannel.write": (
        "054334c7d19259b33286d7742f759217b19464003e13c864a7aa1e7ee9a78eb5",
        "_Channel.write replaces it: does it still only hand the data to transport.write?"),
    "twisted.web.http.HTTPChannel.writeSequence": (
        "06492eb61e8f8b8003c7c5887de6a7f1ecd2299b78748da7271f5183667a244c",
        "_Channel.writeSequence replaces it: does it still only hand the parts to transport.writeSequence?"),
    "twisted.internet.abstract.FileDescriptor.write": (
        "3e46c97fc173bc7e227065420969c27688f24903c27dcc165b63166a605d688c",
        "_Channel._write_now sends before it when nothing is queued: do connected, _writeDisconnected, "
        "_tempDataLen still mean what it reads them for?"),
    "twisted.internet.abstract.FileDescriptor.doWrite": (
        "a986d7b1b1054e431495d50528824683fa7ebb1ffcf3e57333bdd6f37f603141",
        "_Channel._write_now takes dataBuffer[offset:] and _tempDataLen as what is queued: still so?"),
    "twisted.internet.tcp.Connection.writeSomeData": (
        "2dd0d4209260b94e2c6c4e8a16e014346cb432e7d0bfa294f8fe9e1b8b008d26",
        "_Channel._write_now calls it: still sends at once and returns the bytes sent, or an exception "
        "for a lost connection?"),
    "twisted.web.http._ChunkedTransferDecoder.__init__": (
        "33d2107fa07649a2157b9d30e0cd27aaaaef2bfce02978739e7236f7568aa5f7",
        "_ChunkedDecoder.__init__ calls it: same arguments?"),
    "twisted.web.http._ChunkedTransferDecoder.dataReceived": (
        "5a1ed98161d9d8f99edb0086899159ecfaf37542bb3e1f692850374df5888e25",
        "_ChunkedDecoder's states are the _dataReceived_<state> methods it dispatches to, by returning "
        "False to wait for more"),
    "twisted.web.http._ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH": (
        "b8f33f5942b1075f865ce82331334ab3c2d8cf0a3cf450e766ceb49221de01b0",
        "_ChunkedDecoder._dataReceived_CHUNK_LENGTH extends it: still reading the size line from _buffer "
        "into length?"),
    "twisted.web.http._ChunkedTransferDecoder._dataReceived_CRLF": (
        "0b421960db17789052ae3c8cf3a2e519954e7e29ead2dfd00af3fa2dfae85414",
        "_ChunkedDecoder._dataReceived_CRLF extends it"),
    "twisted.web.http._ChunkedTransferDecoder._dataReceived_TRAILER": (
        "1c57e322eebbb246b247100b60199f736173b70457b476c85d6edbe0c49d4e4b",
        "_ChunkedDecoder._dataReceived_TRAILER extends it"),
    "twisted.web.http._genericHTTPChannelProtocolFactory": (
        "210f382c5b9781358512d2c1254f65f18e0d2fe8e8b72428817973d635f4815a",
        "_HTTPFactory.protocol is this with _Channel"),
    "twisted.web.http.Request.gotLength": (
        "1c389b99da50b0ae01068e39c543b5cfca3d227c96313bd6588d0850e61ef49f",
        "_Request.gotLength extends it"),
    "twisted.web.http.Request.handleContentChunk": (
        "6e942756afb787b481118f00463abd0b27aee4af61474df2b4a7ec627902c470",
        "_Request.handleContentChunk extends it"),
    "twisted.web.http.Request.requestReceived": (
        "99ca6c5e24305de4a0cf1270a1cf624046cded1ceb23fb1c62bd743074f61d3f",
        "_Request.requestReceived extends it and sets _parsePOSTFormSubmission, which it reads: still so?"),
    "daphne.http_protocol.WebRequest.__init__": (
        "ec85d9f2a762a39fd674df3521154ce8b1431fd179e669f1b826d56c1eaa3e9b",
        "_Request.__init__ extends it"),
    "daphne.http_protocol.WebRequest.process": (
        "e9babd1c97ce710bda699578b21feafd1f490df6ad8bec45960eba4bbb31e306",
        "_Request relies on it reading the body Twisted spooled (Content-Length) and calling "
        "Server.create_application"),
    "daphne.http_protocol.HTTPFactory.buildProtocol": (
        "35e878a6e0e41af21a217987f9ce6d49762b9e24e953f7fb74d556b25463e176",
        "_HTTPFactory.buildProtocol sets _Request after it: does it still set WebRequest as the "
        "requestFactory, and build the channel with protocol()?"),
    "daphne.server.Server.run": (
        "447c6bd42c62e98cda21fbd603a045ff72abbccabd2b234d8b40c18d366cb7db",
        "DaphneServer.http_factory: does run still build HTTPFactory(self) as self.http_factory and "
        "listen with it?"),
    "daphne.server.Server.create_application": (
        "f1e300b4ecf636c85e1a66250e32af2ebb67728f01919678d43e80c794a79a87",
        "CountArrivals and DrainingServer._application rely on it calling the application synchronously; "
        "DrainingServer.create_application extends it"),
    "daphne.server.Server.application_checker": (
        "ccb688341a7d0bc13647a7d86815adb6a88af08299e4b0460379ea4d55ade79d",
        "DrainingServer._in_flight reads self.connections, which it cleans up: same keys?"),
    "django.core.handlers.asgi.ASGIHandler.handle": (
        "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323",
        "APIHandler.handle is a copy of it with the signals and response.close() inline: copy the changes"),
    "django.core.handlers.asgi.ASGIHandler.send_response": (
        "77eda2b08689b44ee277c936092bde02e50f84727f7398480a127e7e9e1dad06",
        "APIHandler.send_response sends an EventStream itself, as this sends a streaming response: "
        "still a start message with the headers, a body message a part with more_body, then an empty one?"),
    "django.core.handlers.base.BaseHandler.load_middleware": (
        "a1fb7ee5f8586195da2174d1bbc2bbfc7ca19b9d26ea66412cb434f45bf6d467",
        "APIHandler.load_middleware replaces it: same attributes set (_view_middleware, ..., "
        "_middleware_chain)?"),
}
