"""The API's own metrics (requests by route and status, latencies) and its /metrics exposition.

Each app gets its own CollectorRegistry (tests build many apps in one process). Every label value comes
from a fixed set, whatever a client sends: routes by their template (`/v1/images/{image_id}`), never the
concrete path, and `unmatched` for a request no route matched; methods from the HTTP methods the API
serves, anything else `other`; status codes as the app answered them (it chooses them), `other` outside
100-599. The distributed server also registers the queue collector (workers/queues.py): queue depth and
oldest-message age are exported here, once per deployment.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: dict[str, Any]) -> str:
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) and template else "unmatched"


def method_label(method: object) -> str:
    return method if isinstance(method, str) and method in METHODS else "other"


def status_label(code: int) -> str:
    return str(code) if 100 <= code <= 599 else "other"


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
            labels = (route_label(scope), method_label(scope.get("method")), status_label(status["code"]))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
