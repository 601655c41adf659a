"""Static files in production: WhiteNoise's hashed, compressed storage, and the check that
collectstatic was run before a PRODUCTION server starts.

With ``PRODUCTION=true`` pages link each static file under its hashed name, looked up in
the manifest collectstatic writes (``STATIC_ROOT/staticfiles.json``), and WhiteNoise
serves only what collectstatic gathered in STATIC_ROOT (settings.py, STORAGES). Two ways
this goes wrong, and what happens instead of a page failing:

- collectstatic never run into STATIC_ROOT: every page would link files that are not
  there. The server refuses to start, saying so (:func:`check_collected`).
- the manifest lacks a name (collectstatic not run again after an upgrade added a file):
  Django's manifest storage raises ValueError while the template renders, a 500 page.
  :class:`CompressedManifestStaticFilesStorage` links the file under its own name
  instead (served if collectstatic left a copy of it, as it does of every file; a 404 for
  that one file otherwise), and the start logs a warning naming the files missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.conf import settings
from whitenoise.storage import CompressedManifestStaticFilesStorage as _WhiteNoiseStorage

log = logging.getLogger("llmserver.static")

MANIFEST_NAME = "staticfiles.json"  # Django's ManifestFilesMixin.manifest_name
# collectstatic's default ignore patterns, so the comparison sees the files it copies.
_IGNORE_PATTERNS = ["CVS", ".*", "*~"]


class CompressedManifestStaticFilesStorage(_WhiteNoiseStorage):
    """WhiteNoise's storage, where a name missing from the manifest is linked unhashed
    instead of raising (and failing the page that links it)."""

    def stored_name(self, name):
        try:
            return super().stored_name(name)
        except ValueError:  # "Missing staticfiles manifest entry for ..."
            return name


def check_collected() -> None:
    """With PRODUCTION=true: stop the start if collectstatic's manifest is not in
    STATIC_ROOT; warn about the static files the apps have that it does not list."""
    if not settings.PRODUCTION:
        return
    root = Path(settings.STATIC_ROOT)
    manifest = root / MANIFEST_NAME
    try:
        collected = set(json.loads(manifest.read_text())["paths"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit(
            f"llmserver: PRODUCTION=true serves the static files collectstatic gathered, and {manifest} "
            f"is missing or unreadable: run python manage.py collectstatic --noinput (STATIC_ROOT={root})"
        ) from None
    missing = sorted(set(_app_static_files()) - collected)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log.warning("%d static files are not in %s (%s): pages link them unhashed, and those not in %s "
                    "are 404; run python manage.py collectstatic --noinput after every upgrade",
                    len(missing), manifest, shown, root)


def _app_static_files():
    """The names collectstatic would gather from the apps (and STATICFILES_DIRS)."""
    from django.contrib.staticfiles import finders

    for finder in finders.get_finders():
        for path, storage in finder.list(_IGNORE_PATTERNS):
            prefix = (getattr(storage, "prefix", None) or "").strip("/")
            name = path.replace("\\", "/")
            yield f"{prefix}/{name}" if prefix else name
