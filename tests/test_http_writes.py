"""The HTTP channel's writes (llmserver/patches/http_framing.py, ``_Channel._write_now``)
over a real TCP connection with Twisted's own transport: bytes go to the socket when
written if nothing is queued before them, the rest queues as Twisted queues it, the order
holds whatever the socket takes, and a lost connection raises nothing.

The reactor here only records which transports ask to be told when their socket is
writable: the test plays the reactor's part by calling ``doWrite`` itself, so nothing
depends on an event loop's timing."""

from __future__ import annotations

import socket

import pytest

from llmserver.patches.http_framing import _Channel
from twisted.internet import tcp


class RecordingReactor:
    """The part of a reactor a transport uses: its readers and writers."""

    def __init__(self):
        self.readers, self.writers = set(), set()

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)


@pytest.fixture
def connection():
    """(channel, transport, reactor, peer): a ``_Channel`` writing to Twisted's transport
    of the server side of a loopback TCP connection whose other end is ``peer``. Both
    sides' buffers are small, so that a megabyte fills them."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(listener.getsockname())
    sock, address = listener.accept()
    listener.close()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setblocking(False)
    reactor = RecordingReactor()
    channel = _Channel()
    transport = tcp.Server(sock, channel, address, None, 1, reactor)
    channel.transport = transport
    yield channel, transport, reactor, peer
    sock.close()
    peer.close()


def read_exactly(peer: socket.socket, size: int, transport=None) -> bytes:
    """``size`` bytes from ``peer``; between reads, the transport sends what it queued
    (the reactor's part, when the socket is writable)."""
    peer.settimeout(5)
    received = bytearray()
    while len(received) < size:
        if transport is not None and transport.dataBuffer[transport.offset:] + b"".join(transport._tempDataBuffer):
            transport.doWrite()
        received += peer.recv(65536)
    return bytes(received)


def test_a_write_with_nothing_queued_reaches_the_socket_at_once(connection):
    channel, transport, reactor, peer = connection
    channel.write(b"data: one\n\n")
    channel.writeSequence([b"5\r\n", b"hello", b"\r\n"])
    assert reactor.writers == set()  # nothing waits for the reactor
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""
    expected = b"data: one\n\n5\r\nhello\r\n"
    assert read_exactly(peer, len(expected)) == expected


def test_what_the_socket_does_not_take_queues_and_later_writes_queue_behind_it(connection):
    channel, transport, reactor, peer = connection
    big = bytes(range(256)) * 4096  # 1 MiB, more than both buffers hold
    channel.write(big)
    queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    assert 0 < queued < len(big)  # part sent at once, the rest queued
    assert reactor.writers == {transport}
    channel.writeSequence([b"0\r\n", b"\r\n"])  # behind the queue, not ahead of it
    assert transport._tempDataLen == queued - (len(transport.dataBuffer) - transport.offset) + 5
    received = read_exactly(peer, len(big) + 5, transport)
    assert received == big + b"0\r\n\r\n"
    assert reactor.writers == set()  # Twisted stops writing once its queue is empty
    channel.write(b"next")  # and the next write goes at once again
    assert reactor.writers == set()
    assert read_exactly(peer, 4) == b"next"


def test_a_write_to_a_lost_connection_raises_nothing(connection):
    channel, transport, reactor, peer = connection
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # with linger 0: a reset
    for _ in range(3):
        channel.write(b"data: more\n\n")
    # The loss surfaces where Twisted looks for it: the queued write reports it.
    assert reactor.writers == {transport}
    assert isinstance(transport.doWrite(), Exception)


def test_a_connection_being_closed_writes_as_twisted_does(connection):
    channel, transport, reactor, peer = connection
    transport.disconnecting = True  # loseConnection was called: Twisted's queue decides
    channel.write(b"late")
    assert transport._tempDataLen == 4 and reactor.writers == {transport}
