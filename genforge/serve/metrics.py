"""Prometheus metrics. With several worker processes (`workers > 1`) prometheus-client's
multiprocess mode sums them: `genforge serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before the workers start, and /metrics collects every worker's files."""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               multiprocess)

LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("genforge_requests_total", "Requests answered, by route and HTTP status", ["route", "status"])
LATENCY_S = Histogram("genforge_request_seconds", "Time to the whole response, by route", ["route"], buckets=LATENCY)
FIRST_TOKEN_S = Histogram("genforge_time_to_first_token_seconds", "Time to a completion's first token", ["model"],
                          buckets=LATENCY)
GENERATED = Counter("genforge_generated_total", "What was generated: tokens, images or rows", ["model", "unit"])
BATCH = Histogram("genforge_batch_size", "Rows per decoding step (text) or items per call (images, tables)",
                  ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE = Gauge("genforge_queue_depth", "Requests or sequences waiting for the model", ["model"],
              multiprocess_mode="livesum")
REFUSED = Counter("genforge_refusals_total", "Requests refused, by reason", ["reason"])
MODERATED = Counter("genforge_moderation_refusals_total", "Prompts refused and outputs stopped by content moderation",
                    ["rule", "list", "where"])
VERSION = Gauge("genforge_served_version", "1 for the version each model serves now", ["model", "version"],
                multiprocess_mode="liveall")


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
