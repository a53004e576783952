"""Who may chat, and how much: the page's password check and per-session sliding-window limits.

A LAN demo has no accounts; a shared password keeps passers-by out, and per-session limits keep
one person (or one script) from filling the queue everyone else waits in.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import deque
from collections.abc import Callable

PASSWORD_ATTEMPTS_PER_MINUTE = 5


def password_ok(given: str, expected: str) -> bool:
    """Constant-time comparison, so response time does not tell how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class RateLimiter:
    """At most `limit` events in any `window_s` seconds; `limit` 0 means no limit."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque()

    def hit(self) -> int:
        """Count one event if allowed and return 0; otherwise whole seconds until one is allowed
        (at least 1), counting nothing, so a refused attempt does not extend the wait."""
        if self.limit <= 0:
            return 0
        now = self.clock()
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return max(1, math.ceil(self._times[0] + self.window_s - now))
        self._times.append(now)
        return 0
