"""A brake on guessing: a client whose credentials failed too often within a window gets 429 for more tries.

Only a presented credential that is refused counts (an unknown, expired or revoked token, a dead session
cookie); a request with no credentials at all is a plain 401 and counts for nothing. A valid credential
always gets through, even from a limited address: behind a NAT or a reverse proxy, one guesser must not
lock out everyone who shares the address. That costs nothing in safety, because the tokens and session ids
are 256 random bits; the limiter's job is to stop floods and make them visible.

The client is `request.client.host`: the socket peer, or, when `deepscreen serve` runs with proxy headers
on (DEEPSCREEN_PROXY_HEADERS, `--proxy-headers`), the address X-Forwarded-For names for a request that came
through a proxy listed in FORWARDED_ALLOW_IPS. Without that, every client of a proxy shares its address.

In-process and per API process: behind several replicas a guesser gets `replicas x max_failures` tries per
window before 429s.
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
