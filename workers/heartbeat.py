"""The worker's heartbeat: a file for compose and Kubernetes probes, and a Redis key for `deepscreen status`.

The beat runs on the Celery consumer's own timer, not on a side thread, so when that loop wedges the file goes
stale and `deepscreen probe worker` fails.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY_PREFIX = "deepscreen:worker:"


def write_file(path: Path, document: dict[str, Any]) -> None:
    """Atomically: a probe never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def check_file(path: Path, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    """(alive, why): the heartbeat file exists and is younger than max_age_s."""
    try:
        document = json.loads(path.read_text())
        at = float(document["at"])
    except FileNotFoundError:
        return False, f"no heartbeat file at {path}"
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat file: {type(exc).__name__}"
    age = (now or time.time()) - at
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f}s old (max {max_age_s:.0f}s)"
    return True, f"heartbeat {age:.0f}s old, model_version={document.get('model_version')}"


def live_workers(client: Any) -> list[dict[str, Any]]:
    """Every worker whose heartbeat key has not expired (a redis.Redis client)."""
    workers = []
    for key in sorted(client.scan_iter(match=KEY_PREFIX + "*", count=500)):
        raw = client.get(key)
        if raw:
            try:
                workers.append(json.loads(raw))
            except ValueError:
                continue
    return workers


class Heartbeat:
    def __init__(self, settings: Any, hostname: str, queues: list[str]) -> None:
        self.path = Path(settings.heartbeat_file)
        self.interval = float(settings.heartbeat_seconds)
        self.broker_url = settings.broker_url
        self.hostname = hostname
        self.queues = queues
        self.model_version = _model_version(settings.model_dir)
        self._client: Any = None

    def document(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "pid": os.getpid(), "model_version": self.model_version,
                "queues": self.queues, "at": time.time()}

    def beat(self) -> None:
        document = self.document()
        try:
            write_file(self.path, document)
        except OSError as exc:
            log.warning("heartbeat file not written path=%s error=%s", self.path, type(exc).__name__)
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(self.broker_url, socket_timeout=2, socket_connect_timeout=2)
            self._client.set(KEY_PREFIX + self.hostname, json.dumps(document), ex=max(3, int(self.interval * 3)))
        except Exception as exc:  # noqa: BLE001 - the broker is down: the consumer will say so; the file still beats
            log.warning("heartbeat key not written error=%s", type(exc).__name__)
            self._client = None

    def stop(self) -> None:
        try:
            if self._client is not None:
                self._client.delete(KEY_PREFIX + self.hostname)
        except Exception:  # noqa: BLE001
            pass
        self.path.unlink(missing_ok=True)


def _model_version(model_dir: Path) -> str | None:
    try:
        from pipeline.model import read_metadata

        return read_metadata(Path(model_dir)).version
    except Exception:  # noqa: BLE001 - the worker will fail loudly on its own when it loads the model
        return None


_current: Heartbeat | None = None


def _queues(consumer: Any) -> list[str]:
    task_consumer = getattr(consumer, "task_consumer", None)
    return sorted(q.name for q in (getattr(task_consumer, "queues", None) or []))


def connect_signals() -> None:
    """Start beating when the consumer is ready (main process only), stop at shutdown."""
    from celery import signals

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        global _current
        settings = sender.app.conf.deepscreen_settings
        hostname = getattr(sender, "hostname", None) or socket.gethostname()
        _current = Heartbeat(settings, hostname, _queues(sender))
        _current.beat()
        timer = getattr(sender, "timer", None)
        if timer is not None:
            timer.call_repeatedly(_current.interval, _current.beat)
        else:  # no event loop timer (should not happen with the redis transport): a side thread
            import threading

            def loop() -> None:
                while _current is not None:
                    time.sleep(_current.interval)
                    _current.beat()

            threading.Thread(target=loop, daemon=True, name="heartbeat").start()
        log.info("heartbeat started path=%s interval=%.0fs model_version=%s", _current.path, _current.interval,
                 _current.model_version)

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        global _current
        if _current is not None:
            _current.stop()
            _current = None
