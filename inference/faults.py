"""A test-only switch for crashing the engine of a running server from outside.

With ``ENGINE_FAULT_INJECTION`` on (never in production), SIGUSR1 makes the next step of
every loaded engine raise, as a crash inside onnxruntime-genai would. The engine worker
then ends its running turns with an error, restarts its Engine and serves on
(inference/batching.py ``_step``); tests/test_engine_faults.py drives it over HTTP. A
signal rather than an endpoint: nothing reachable over the network can trigger it.
"""

import signal

from django.conf import settings

from inference.registry import registry


def install() -> None:
    if settings.ENGINE_FAULT_INJECTION:
        signal.signal(signal.SIGUSR1, _inject)


def _inject(signum, frame) -> None:
    for worker in registry.workers():
        worker.inject_fault()
