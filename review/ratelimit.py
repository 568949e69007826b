"""A brake on guessing: too many failed authentications from one client within a window get 429.

In-process and per API process: behind several replicas a guesser gets `replicas x max_failures` tries per
window, which still makes guessing a 256-bit token hopeless; the point is to stop floods and make them visible.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, client: str, now: float) -> deque[float]:
        seen = self._failures[client]
        while seen and now - seen[0] > self.window_s:
            seen.popleft()
        return seen

    def blocked(self, client: str) -> float:
        """Seconds until this client may try again (0 = not blocked)."""
        now = time.monotonic()
        with self._lock:
            seen = self._trim(client, now)
            if len(seen) < self.max_failures:
                return 0.0
            return max(0.0, self.window_s - (now - seen[0]))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._trim(client, now).append(now)
            if len(self._failures) > 100_000:  # bound memory under a spray of addresses
                self._failures.clear()
