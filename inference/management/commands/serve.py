"""``python manage.py serve``: run Daphne on SERVER_HOST:SERVER_PORT (what `make run` does)."""

import os

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve llmserver with Daphne on SERVER_HOST:SERVER_PORT, loading the configured model."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.SERVER_HOST)
        parser.add_argument("--port", type=int, default=settings.SERVER_PORT)

    def handle(self, *args, host, port, **options):
        from inference.registry import ModelsConfigError, specs_from_settings

        try:
            specs, default = specs_from_settings()
            more = f" (and {len(specs) - 1} more on demand)" if len(specs) > 1 else ""
            self.stdout.write(f"llmserver: serving {default}{more} on http://{host}:{port}", ending="\n")
        except ModelsConfigError:
            pass  # the application says what is wrong when it starts
        self.stdout.flush()
        CommandLineInterface().run([
            "--bind", host,
            "--port", str(port),
            # Daphne's default has no HTTP timeout: a long stream is never cut off.
            "--application-close-timeout", "10",
            # llmserver.access logs each request with its id and duration instead.
            "--access-log", os.devnull,
            "llmserver.asgi:application",
        ])
