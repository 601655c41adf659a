"""Prometheus metrics, named in vLLM's style (``llmserver:...``), for ``GET /metrics``.

Counters and histograms are updated once per request, when it ends (never per token);
the engine gauges are read from the engines when Prometheus scrapes. Labels are bounded:
endpoint names, catalogue model ids (``unknown`` for a name not in the catalogue) and
HTTP statuses; never keys, users or request ids. Each server process has its own
metrics: scrape every process.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("llmserver:requests", "Requests answered, by endpoint, model and HTTP status.",
                   ["endpoint", "model", "status"], registry=REGISTRY)
PROMPT_TOKENS = Counter("llmserver:prompt_tokens", "Prompt tokens processed.", ["model"], registry=REGISTRY)
GENERATION_TOKENS = Counter("llmserver:generation_tokens", "Tokens generated.", ["model"], registry=REGISTRY)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmserver:time_to_first_token_seconds", "From the request's arrival to its first generated text.", ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    registry=REGISTRY)
INTER_TOKEN_LATENCY = Histogram(
    "llmserver:inter_token_latency_seconds", "Each request's mean time between generated tokens after the first.",
    ["model"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
    registry=REGISTRY)
REQUEST_LATENCY = Histogram(
    "llmserver:e2e_request_latency_seconds", "From a generation request's arrival to its last byte.", ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0), registry=REGISTRY)


def observe(endpoint: str, model: str, status: int, started: float, generation=None) -> None:
    """One finished request (``started``: its perf_counter() at arrival)."""
    REQUESTS.labels(endpoint or "other", model or "none", str(status)).inc()
    if generation is None:
        return
    usage = generation.usage()
    PROMPT_TOKENS.labels(model).inc(usage["prompt_tokens"])
    GENERATION_TOKENS.labels(model).inc(usage["completion_tokens"])
    ended = time.perf_counter()
    REQUEST_LATENCY.labels(model).observe(ended - started)
    first = generation.first_text_at
    if first is not None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(first - started)
        if usage["completion_tokens"] > 1:
            INTER_TOKEN_LATENCY.labels(model).observe((ended - first) / (usage["completion_tokens"] - 1))


class _EngineCollector:
    """The engines' state at scrape time."""

    def collect(self):
        from inference.registry import registry

        running = GaugeMetricFamily("llmserver:num_requests_running", "Sequences in the engine's batch.", labels=["model"])
        waiting = GaugeMetricFamily("llmserver:num_requests_waiting", "Sequences waiting for a batch slot.",
                                    labels=["model"])
        occupancy = GaugeMetricFamily("llmserver:batch_occupancy", "Running sequences / the batch size an engine step "
                                      "serves.", labels=["model"])
        in_flight = GaugeMetricFamily("llmserver:requests_in_flight", "Requests holding a model.", labels=["model"])
        steps = CounterMetricFamily("llmserver:engine_steps", "Engine scheduler steps run.", labels=["model"])
        loaded = 0
        for slot in registry.slots():
            model = slot.spec.id
            in_flight.add_metric([model], slot.in_flight)
            worker = slot.worker
            if worker is None or not slot.loaded:
                continue
            loaded += 1
            stats = worker.stats
            running.add_metric([model], stats.running)
            waiting.add_metric([model], stats.waiting)
            occupancy.add_metric([model], stats.running / max(1, worker.batch_limit))
            steps.add_metric([model], stats.steps)
        yield from (running, waiting, occupancy, in_flight, steps)
        yield GaugeMetricFamily("llmserver:models_loaded", "Models loaded in this process.", value=loaded)


REGISTRY.register(_EngineCollector())


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
