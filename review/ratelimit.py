"""A brake on guessing: a client whose credentials failed too often within a window gets 429 for more tries.

Only a refused credential counts, and a valid one always passes even from a limited address, so one guesser
behind a shared NAT or proxy locks no one out; the tokens are 256 random bits, so the limiter is there to stop
floods and make them visible. In-process: each API replica counts on its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_TRACKED_CLIENTS = 100_000  # bound memory under a spray of addresses


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        # the newest `max_failures` failures are all it takes to know whether the window holds that many
        seen = self._failures.get(client) or deque(maxlen=max(1, self.max_failures))
        while seen and now - seen[0] > self.window_s:
            seen.popleft()
        return seen

    def failed(self, client: str) -> bool:
        """Record a refused credential; True when the client was already at the limit before it (answer 429:
        the failure that reaches the limit is still a 401)."""
        now = time.monotonic()
        with self._lock:
            seen = self._recent(client, now)
            over = len(seen) >= self.max_failures
            if len(self._failures) >= MAX_TRACKED_CLIENTS and client not in self._failures:
                self._failures.clear()
            seen.append(now)
            self._failures[client] = seen
            return over
