"""Prometheus metrics of the server, in a registry of its own (one per app, so tests and
several apps in a process never share counters).

    bertjax_requests_total{route, status}          requests answered
    bertjax_request_duration_seconds{route}        end-to-end latency inside the server
    bertjax_queue_duration_seconds                 per request: arrival to its batch starting
    bertjax_inference_duration_seconds             per request: its batch's compute time
    bertjax_batch_size                             rows per batch run
    bertjax_batch_tokens                           real tokens per batch run
    bertjax_queue_depth                            rows waiting for a batch
    bertjax_requests_in_flight                     requests admitted and not yet answered
    bertjax_generated_tokens_total                 tokens generated (GPT runs)
    bertjax_generations_total{finish_reason}       generations finished (GPT runs)
"""

from __future__ import annotations

import prometheus_client as prom

from bertjax.serve.batcher import BatchStats

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ServerMetrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "bertjax_requests", "Requests answered.", ["route", "status"], registry=r
        )
        self.latency = prom.Histogram(
            "bertjax_request_duration_seconds",
            "Request latency inside the server.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = prom.Histogram(
            "bertjax_queue_duration_seconds",
            "Time from a request's arrival in the queue to its batch starting.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = prom.Histogram(
            "bertjax_inference_duration_seconds",
            "Compute time of the batch that ran a request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "bertjax_batch_size", "Rows per batch run.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = prom.Histogram(
            "bertjax_batch_tokens",
            "Real (non-padding) tokens per batch run.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = prom.Gauge(
            "bertjax_queue_depth", "Rows waiting for a batch.", registry=r
        )
        self.in_flight = prom.Gauge(
            "bertjax_requests_in_flight", "Requests admitted and not yet answered.", registry=r
        )

        self.generated_tokens = prom.Counter(
            "bertjax_generated_tokens", "Tokens generated (GPT runs).", registry=r
        )
        self.generations = prom.Counter(
            "bertjax_generations",
            "Generations finished, by finish reason (GPT runs).",
            ["finish_reason"],
            registry=r,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.rows)
        self.batch_tokens.observe(stats.real_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return prom.generate_latest(self.registry)
