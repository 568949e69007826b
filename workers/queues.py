"""What waits on the Redis queues: depth and the age of the oldest message, per queue.

Kombu keeps a queue as a list (LPUSH to add, BRPOP to take), so the oldest message is its last element, with
priority sub-lists `<name>\\x06\\x16<step>`; reserved messages are in its `unacked` hash and are not backlog.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

QUEUES = ("upload", "rescan")
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_HASH = "unacked"  # kombu's Redis transport's default: delivery tag -> [message, exchange, routing key]


@dataclass(frozen=True)
class QueueState:
    queue: str
    depth: int
    oldest_age_s: float | None  # None: empty, or no readable timestamp


def _lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS if step]


def _task_call(message: dict) -> tuple[list, dict]:
    """The args and kwargs a kombu message (parsed JSON) carries for its task."""
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    return args, kwargs


def held_event_ids(client: Any, unacked_key: str = UNACKED_HASH) -> set[str]:
    """Event ids of the messages in kombu's unacknowledged hash (a redis.Redis client; the key is the channel's
    `unacked_key`): reserved by a live worker (prefetched, being screened, a retry waiting for its countdown), or
    held for a dead one until the visibility timeout puts them back on their queue. Such an event is not lost.
    Bounded by the workers' prefetch. A message in another format (compressed, Celery's protocol 1) is not
    read, so its event may be sent twice, which screening's idempotence makes harmless."""
    ids = set()
    for value in client.hvals(unacked_key):
        try:
            args, _kwargs = _task_call(json.loads(value)[0])
            ids.add(str(args[0]["event_id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # not a screening message
    return ids


def message_time(raw: bytes | str) -> float | None:
    """Epoch seconds a queued kombu message was first enqueued (or its event uploaded), if it says."""
    try:
        args, kwargs = _task_call(json.loads(raw))
        if kwargs.get("enqueued_at"):
            return float(kwargs["enqueued_at"])
        uploaded = (args[0] or {}).get("uploaded_at") if args else None
        if uploaded:
            return datetime.fromisoformat(str(uploaded).replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return None


def queue_states(client: Any, queues: Iterable[str] = QUEUES, now: float | None = None) -> list[QueueState]:
    """Depth and oldest-message age of each queue (a redis.Redis client)."""
    now = now or time.time()
    states = []
    for queue in queues:
        depth, oldest = 0, None
        for name in _lists(queue):
            length = int(client.llen(name))
            depth += length
            if length:
                stamp = message_time(client.lindex(name, -1))
                if stamp is not None:
                    oldest = min(oldest, stamp) if oldest is not None else stamp
        states.append(QueueState(queue, depth, max(0.0, now - oldest) if oldest is not None else None))
    return states


class QueueCollector:
    """A Prometheus collector: deepscreen_queue_depth and deepscreen_queue_oldest_age_seconds per queue,
    read from Redis at scrape time. An unreachable Redis yields deepscreen_queue_up 0 and no depths."""

    METRICS = ("deepscreen_queue_up", "deepscreen_queue_depth", "deepscreen_queue_oldest_age_seconds")

    def __init__(self, broker_url: str, queues: Iterable[str] = QUEUES) -> None:
        self.broker_url = broker_url
        self.queues = tuple(queues)
        self._client: Any = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("deepscreen_queue_up", "1 when the broker answered the queue collector")
        depth = GaugeMetricFamily("deepscreen_queue_depth", "Messages waiting on a Redis queue", labels=["queue"])
        age = GaugeMetricFamily("deepscreen_queue_oldest_age_seconds",
                                "Age of the oldest waiting message (0 when the queue is empty)", labels=["queue"])
        try:
            states = queue_states(self._redis(), self.queues)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis is down
            log.warning("queue collector cannot read the broker error=%s", type(exc).__name__)
            self._client = None
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state in states:
            depth.add_metric([state.queue], state.depth)
            age.add_metric([state.queue], state.oldest_age_s or 0.0)
        yield from (up, depth, age)

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.broker_url, socket_timeout=2, socket_connect_timeout=2)
        return self._client
