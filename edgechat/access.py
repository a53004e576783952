"""Who may chat, and how much: the password check and per-address sliding-window limits.

A LAN demo has no accounts; a shared password keeps passers-by out, and limits per client
address (not per browser session, which a reload renews) keep one person or one script from
guessing the password or filling the queue everyone else waits in.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

PASSWORD_ATTEMPTS_PER_MINUTE = 5
MAX_TRACKED_ADDRESSES = 10_000
LOCKED_ADDRESSES = 1024  # addresses locked out for wrong API keys, remembered at once


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


class ClientLimits:
    """Limits per client address across the whole process, so a reload, another tab or a script
    opening many sessions (or API calls) gets no more than one person's share: password tries,
    questions a minute, and answers running or waiting at once. Thread-safe."""

    def __init__(
        self,
        rate_limit: int,
        max_in_flight: int,
        password_tries: int = PASSWORD_ATTEMPTS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_limit = rate_limit
        self.max_in_flight = max_in_flight
        self._password_tries = password_tries
        self._clock = clock
        self._lock = threading.Lock()
        self._questions: dict[str, RateLimiter] = {}
        self._passwords: dict[str, RateLimiter] = {}
        self._in_flight: dict[str, int] = {}

    def password_try(self, address: str) -> int:
        """0 if this address may try a password now, else whole seconds to wait."""
        with self._lock:
            return self._limiter(self._passwords, address, self._password_tries).hit()

    def question(self, address: str) -> int:
        """0 if this address may ask now (counted), else whole seconds to wait."""
        with self._lock:
            return self._limiter(self._questions, address, self.rate_limit).hit()

    def acquire(self, address: str) -> Callable[[], None] | None:
        """A slot for one answer (running or queued) of this address, as a release function that
        is safe to call twice; None when the address already has max_in_flight."""
        with self._lock:
            if self._in_flight.get(address, 0) >= self.max_in_flight:
                return None
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                left = self._in_flight.get(address, 1) - 1
                if left:
                    self._in_flight[address] = left
                else:
                    self._in_flight.pop(address, None)

        return release

    def in_flight(self, address: str) -> int:
        with self._lock:
            return self._in_flight.get(address, 0)

    def _limiter(self, table: dict[str, RateLimiter], address: str, limit: int) -> RateLimiter:
        limiter = table.get(address)
        if limiter is None:
            if len(table) > MAX_TRACKED_ADDRESSES:  # forget quiet addresses rather than grow forever
                table.clear()
            limiter = table[address] = RateLimiter(limit, clock=self._clock)
        return limiter


class KeyLockout:
    """Addresses locked out of the API for wrong keys. Wrong keys spend the address's password
    tries (the same the page's form spends, in `limits`); once they are spent the address is
    locked out for the wait: even the right key is refused until then, so a guesser learns
    nothing. At most `remembered` addresses are kept; ended lockouts are forgotten first."""

    def __init__(
        self, limits: ClientLimits, remembered: int = LOCKED_ADDRESSES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.remembered = remembered
        self._clock = clock
        self._until: dict[str, float] = {}  # address -> when its lockout ends (event loop only)

    def wait(self, address: str) -> int:
        """Whole seconds until `address` may present a key again; 0 when it is not locked out."""
        left = self._until.get(address, 0.0) - self._clock()
        return math.ceil(left) if left > 0 else 0

    def wrong_key(self, address: str) -> int:
        """Count a wrong key: 0 while the address has tries left, else the seconds it is now
        locked out for."""
        wait = self.limits.password_try(address)
        if wait:
            now = self._clock()
            if len(self._until) >= self.remembered:
                self._until = {a: t for a, t in self._until.items() if t > now}
            self._until[address] = now + wait
        return wait


def client_address(peer: str | None, headers: Mapping[str, str], trusted_proxy: str | None) -> str:
    """Who is asking: the peer address, or — only when the peer is the operator's trusted reverse
    proxy — the last address that proxy appended to X-Forwarded-For (a client can put anything in
    front of it, so only the proxy's own entry counts). Loopback is a proxy only when named; a
    loopback proxy matches any loopback peer (the same machine)."""
    peer = peer or "unknown"
    if trusted_proxy and (peer == trusted_proxy or (_loopback(peer) and _loopback(trusted_proxy))):
        forwarded = [a.strip() for a in headers.get("x-forwarded-for", "").split(",") if a.strip()]
        if forwarded:
            return forwarded[-1]
    return peer


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


_shared: dict[tuple[int, int], ClientLimits] = {}
_shared_lock = threading.Lock()


def shared_limits(rate_limit: int, max_in_flight: int) -> ClientLimits:
    """The process's limits: the page's sessions and the API's requests count against the same."""
    with _shared_lock:
        key = (rate_limit, max_in_flight)
        if key not in _shared:
            _shared[key] = ClientLimits(rate_limit, max_in_flight)
        return _shared[key]
