"""``python manage.py serve``: run Daphne on SERVER_HOST:SERVER_PORT (what `make run` does).

Daphne's server is run here rather than through its command line so that SIGTERM and
SIGINT drain it (llmserver.shutdown) instead of cutting every request in flight; the
options are those the command line was given before.
"""

import gc
import logging
import sys

from asgiref.compatibility import guarantee_single_callable
from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.core.management.base import BaseCommand

# The collector's thresholds (youngest generation first): a request allocates thousands of
# objects that die with it, so the youngest generation is collected every 10000 new
# objects rather than CPython's 700.
_GC_THRESHOLDS = (10_000, 10, 10)


class Command(BaseCommand):
    help = "Serve llmserver with Daphne on SERVER_HOST:SERVER_PORT, loading the configured model."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.SERVER_HOST)
        parser.add_argument("--port", type=int, default=settings.SERVER_PORT)

    def handle(self, *args, host, port, **options):
        from accounts.books import books
        from inference.registry import ModelsConfigError, registry, specs_from_settings
        from llmserver.shutdown import DrainingServer

        try:
            specs, default = specs_from_settings()
            more = f" (and {len(specs) - 1} more on demand)" if len(specs) > 1 else ""
            if settings.LOG_FORMAT == "json":  # every line of the output is a JSON object
                logging.getLogger("llmserver").info("serving %s%s on http://%s:%s", default, more, host, port)
            else:
                self.stdout.write(f"llmserver: serving {default}{more} on http://{host}:{port}", ending="\n")
        except ModelsConfigError:
            pass  # the application says what is wrong when it starts
        self.stdout.flush()
        from llmserver.asgi import application  # loads the configured model

        # What exists now (modules, settings, the models' tokenizers and templates) lives as
        # long as the process: out of the collector's generations, so that a collection walks
        # only what requests allocated, and collections started less often by them.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*_GC_THRESHOLDS)

        server = DrainingServer(
            guarantee_single_callable(application),
            endpoints=build_endpoint_description_strings(host=host, port=port),
            grace_seconds=settings.SHUTDOWN_GRACE_SECONDS,
            # Daphne's default has no HTTP timeout: a long stream is never cut off.
            application_close_timeout=10,
            websocket_connect_timeout=5,  # Daphne's command line default
            # No Daphne access log: llmserver.access logs each request with its id and duration.
            action_logger=None,
            # Behind a proxy (TRUST_X_FORWARDED_FOR): the client's address is the first of
            # X-Forwarded-For, not the proxy's. Neither its port nor its scheme is taken
            # from a header: the scheme is Django's to judge (TRUST_X_FORWARDED_PROTO).
            proxy_forwarded_address_header="X-Forwarded-For" if settings.TRUST_X_FORWARDED_FOR else None,
        )
        server.run()
        # The reactor has stopped: end what the engines still hold, then write every
        # usage record and lease still waiting before the process goes.
        registry.stop_all()
        books.flush()
        if server.abort_start:  # it could not listen (the reason is logged)
            sys.exit(1)
