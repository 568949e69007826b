"""The API's own metrics (requests by route and status, latencies) and its /metrics exposition.

Each app gets its own CollectorRegistry (tests build many apps in one process). Routes are labelled by
their template (`/v1/images/{image_id}`), never by the concrete path, so the label set stays bounded; a
request no route matched is `unmatched`. The distributed server also registers the queue collector
(workers/queues.py): queue depth and oldest-message age are exported here, once per deployment.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    def __init__(self, broker_url: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("deepscreen_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("deepscreen_http_request_seconds", "HTTP request latency by route, method and status",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        if broker_url:
            from workers.queues import QueueCollector

            self.registry.register(QueueCollector(broker_url))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request (streaming bodies included)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            code = str(status["code"])
            self.metrics.requests.labels(template, method, code).inc()
            self.metrics.latency.labels(template, method, code).observe(time.perf_counter() - started)
