"""The ASGI application Daphne serves.

Importing this module is what starts a server, so the configured model is loaded here,
not in AppConfig.ready(): migrate, shell, other management commands and tests that do
not need an engine never load one. A model that cannot be served stops the server at
start with one line naming the path and what is wrong.
"""

import os
import sys

import django
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")

django.setup(set_prefix=False)
from llmserver.static import check_collected  # noqa: E402  (needs Django set up)

check_collected()  # PRODUCTION: no start without collectstatic's files
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)
from django.conf import settings  # noqa: E402

from chat.routing import websocket_application  # noqa: E402

from inference import faults  # noqa: E402
from inference.engine import ModelLoadError  # noqa: E402
from accounts.prices import follow_catalogue  # noqa: E402
from inference.registry import load_configured_models, registry  # noqa: E402
from llmserver.handlers import APIHandler, CountArrivals, HTTPRouter  # noqa: E402

# The engine threads give up the GIL for each scheduler step and need it back at once
# when the step ends; with CPython's default 5 ms switch interval a step could wait that
# long behind the event loop's or the accounting thread's Python code.
sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL_MS / 1000)

if settings.LOAD_MODELS_ON_START:
    try:
        load_configured_models()
    except ModelLoadError as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
follow_catalogue({spec.id: spec.prices for spec in registry.specs() if spec.prices})
faults.install()  # testing only: off unless ENGINE_FAULT_INJECTION

# Outermost: a generation request counts as arrived as soon as Daphne has read it (the
# engines wait a moment for such requests before they form a batch; inference/batching.py).
# Daphne calls it synchronously, so it must stay a plain function (handlers.CountArrivals).
application = CountArrivals(ProtocolTypeRouter({
    # The API paths skip the web site's session/CSRF/messages middleware and their
    # thread hops (llmserver/patches/asgi_handler.py); the rest is Django's handler.
    "http": HTTPRouter(api=APIHandler(), web=django_asgi_app),
    # The chat page's socket: opened only by a page of this site's own origin (or a
    # trusted one), so no other page can use the user's cookie with it (chat/origin.py).
    "websocket": websocket_application,
}))
