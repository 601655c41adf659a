"""The framework code llmserver overrides, copies or relies on (llmserver/patches) is the
code it was written for: the pinned versions, and each upstream function's source as
recorded. An upgrade that changes one fails here, naming what to re-check."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from importlib import metadata

from llmserver.patches import UPSTREAM, WRITTEN_FOR
from tests.conftest import ROOT


def _upstream(name: str):
    """The object a dotted name such as ``twisted.web.http.HTTPChannel.dataReceived`` names."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(name)


def _sha256(name: str) -> str:
    return hashlib.sha256(inspect.getsource(_upstream(name)).encode()).hexdigest()


def changed(recorded: dict) -> list[str]:
    """What to re-check, for each upstream function whose source is not as recorded."""
    return [f"{name} (now {_sha256(name)}): {recheck}"
            for name, (sha256, recheck) in recorded.items() if _sha256(name) != sha256]


def test_the_upstream_functions_are_as_the_patches_were_written_for():
    assert changed(UPSTREAM) == [], (
        "upstream code that llmserver/patches replaces, copies, extends or relies on has changed; re-check "
        "each, then record its new SHA-256 in llmserver/patches/__init__.py UPSTREAM (and WRITTEN_FOR)")


def test_a_changed_function_is_named_with_what_to_re_check():
    name = "daphne.server.Server.create_application"
    sha256, recheck = UPSTREAM[name]
    edited = {name: ("0" * 64, recheck), "django.core.handlers.asgi.ASGIHandler.handle":
              UPSTREAM["django.core.handlers.asgi.ASGIHandler.handle"]}
    assert changed(edited) == [f"{name} (now {sha256}): {recheck}"]


def test_the_versions_written_for_are_those_pinned_and_installed():
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line)
        if match:
            pinned[match[1].lower()] = match[2]
    assert {name: pinned.get(name.lower()) for name in WRITTEN_FOR} == WRITTEN_FOR, (
        "requirements.txt pins other versions than llmserver/patches was written for: re-check the patches "
        "against them (tests/test_patches.py names what changed), then update WRITTEN_FOR")
    assert {name: metadata.version(name) for name in WRITTEN_FOR} == WRITTEN_FOR


def test_daphne_server_builds_its_connections_from_the_patched_classes_and_rebinds_nothing():
    from daphne import http_protocol
    from twisted.web import http

    from llmserver.patches.http_framing import DaphneServer, _Channel, _HTTPFactory, _Request
    from llmserver.shutdown import DrainingServer

    server = DaphneServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.http_factory = http_protocol.HTTPFactory(server)  # as Server.run does
    assert type(server.http_factory) is _HTTPFactory and server.http_factory.server is server
    connection = server.http_factory.buildProtocol(None)
    assert type(connection._channel) is _Channel and connection.requestFactory is _Request
    assert issubclass(DrainingServer, DaphneServer)
    # Other servers in the process, and Twisted's own, are left as they are.
    assert http_protocol.WebRequest is _Request.__base__
    assert http_protocol.HTTPFactory.protocol is http._genericHTTPChannelProtocolFactory
