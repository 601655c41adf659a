"""The chat page's vendored libraries (chat/static/chat/vendor, fetched by `make
vendor-js`) are the files their SHA256SUMS name: an edit by hand, or a partial update,
fails here."""

import hashlib
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "chat" / "static" / "chat" / "vendor"


def test_every_vendored_file_has_the_digest_recorded_for_it():
    recorded = dict(reversed(line.split("  ")) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())
    assert sorted(recorded) == ["highlight-dark.min.css", "highlight-light.min.css", "highlight.min.js",
                                "marked.umd.js", "purify.min.js"]
    assert {name: hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() for name in recorded} == recorded


def test_the_versions_and_licenses_travel_with_the_files():
    versions = (VENDOR / "VERSIONS").read_text()
    assert versions.splitlines()[0] == "marked 18.3.0 (MIT): marked.umd.js"
    for name in ("marked.LICENSE", "dompurify.LICENSE", "highlight.LICENSE"):
        assert (VENDOR / name).stat().st_size > 500
