"""Parked caches: idle conversations' KV caches copied to host RAM, so a person's next turn
restores instead of re-prefilling the whole chat.

The scheduler parks a conversation's cache when its sequence is needed by someone else
(llama-server's `prompt_save` does the same when a slot changes hands) and restores it, keeping
the longest common prefix, when its cache key asks again. The store is least-recently-used within
`capacity_bytes`, forgets a cache key after `ttl_s` without use, and stops taking new states while
the machine's available RAM is below a floor (then a cache is dropped and its conversation simply
re-prefills later: nobody's answer fails for it). Answers taking turns (time slicing) park their
caches here too, as held states outside the LRU: they count against the same bytes, so
--host-cache bounds every parked cache, and an idle conversation's cache makes way for an answer's.
Only the scheduler's worker thread touches a HostCache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIB = 1 << 20
DEFAULT_SHARE = 0.25  # --host-cache default: this share of available RAM at start ...
DEFAULT_CAP = 8192 * MIB  # ... at most llama-server's --cache-ram default
RAM_FLOOR_SHARE = 0.05  # parking stops while available RAM is below this share of the total ...
RAM_FLOOR_MIN = 256 * MIB  # ... or below this, whichever is larger


@dataclass(eq=False)
class ParkedState:
    """One cache key's KV cache in host RAM: the tokens it holds and the engine's opaque bytes."""

    cache_key: str
    tokens: list[int]
    data: bytearray
    last_used: float
    sampling: Any = None  # a time-sliced answer's sampler state, on engines that carry it

    @property
    def nbytes(self) -> int:
        return len(self.data)


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo line (MemAvailable, MemTotal) in bytes; None where there is no /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_host_cache_bytes() -> int:
    """A quarter of the RAM available now, at most 8 GiB; 1 GiB where it cannot be read."""
    available = meminfo_bytes("MemAvailable")
    if available is None:
        return 1024 * MIB
    return min(DEFAULT_CAP, int(available * DEFAULT_SHARE))


def ram_floor_bytes() -> int:
    total = meminfo_bytes("MemTotal") or 0
    return max(RAM_FLOOR_MIN, int(total * RAM_FLOOR_SHARE))


class HostCache:
    """LRU of parked caches (by cache key), bounded in bytes and by a time-to-live."""

    def __init__(
        self,
        capacity_bytes: int,
        ttl_s: float,
        *,
        available_ram: Callable[[], int | None] = lambda: meminfo_bytes("MemAvailable"),
        ram_floor: int | None = None,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.ttl_s = ttl_s
        self._available_ram = available_ram
        self._ram_floor = ram_floor_bytes() if ram_floor is None else ram_floor
        self._entries: OrderedDict[str, ParkedState] = OrderedDict()
        self._bytes = 0  # the entries' and the held states'
        self._held: set[ParkedState] = set()  # sliced answers' caches: never evicted, only released
        self.ram_short = False  # parking refused for RAM: logged once per episode
        self.dropped = 0  # caches forgotten for room, age or RAM (they re-prefill)
        # told (state, True) when a state is kept, (state, False) when it goes: the prefix index
        self.listener: Callable[[ParkedState, bool], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, cache_key: object) -> bool:
        return cache_key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def held_bytes(self) -> int:
        return sum(state.nbytes for state in self._held)

    def can_take(self, nbytes: int) -> bool:
        """Whether a state of about `nbytes` would be kept: it fits the capacity beside the held
        states (idle entries make way) and the machine has RAM to spare. False means the scheduler
        drops the cache instead of parking it (or, for an answer, keeps it running)."""
        if self.held_bytes + nbytes > self.capacity_bytes:
            return False
        available = self._available_ram()
        short = available is not None and available - nbytes < self._ram_floor
        if short and not self.ram_short:
            log.warning(
                "host RAM is short (%d MiB available): idle caches are dropped instead of parked; "
                "their conversations' next turn re-prefills",
                (available or 0) // MIB,
            )
        elif not short and self.ram_short:
            log.warning("host RAM recovered: parking idle caches again")
        self.ram_short = short
        return not short

    def put(self, state: ParkedState) -> bool:
        """Keep `state`, evicting the least recently used beyond the capacity; False if it could
        not be kept (then nothing was stored)."""
        self.drop(state.cache_key)
        if not self.can_take(state.nbytes):
            self.dropped += 1
            return False
        self._make_room(state.nbytes)
        self._entries[state.cache_key] = state
        self._bytes += state.nbytes
        if self.listener is not None:
            self.listener(state, True)
        return True

    def hold(self, state: ParkedState) -> None:
        """Keep an answer's cache until `release`: its bytes exist already (`can_take` said they
        fit), so least recently used idle entries go to make room for them."""
        self._make_room(state.nbytes)
        self._held.add(state)
        self._bytes += state.nbytes

    def release(self, state: ParkedState) -> None:
        """A held state went back into a sequence, or its answer ended while it waited."""
        if state in self._held:
            self._held.remove(state)
            self._bytes -= state.nbytes

    def _make_room(self, nbytes: int) -> None:
        while self._entries and self._bytes + nbytes > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
            self.dropped += 1

    def get(self, cache_key: str) -> ParkedState | None:
        """A cache key's parked state, left in place (its LRU position unchanged)."""
        return self._entries.get(cache_key)

    def take(self, cache_key: str) -> ParkedState | None:
        """Remove and return a cache key's parked state (it goes back into a sequence)."""
        return self._remove(cache_key)

    def drop(self, cache_key: str) -> bool:
        return self._remove(cache_key) is not None

    def expire(self, now: float) -> list[str]:
        """Forget caches unused for longer than the time-to-live; their cache keys."""
        old = [s for s, state in self._entries.items() if now - state.last_used > self.ttl_s]
        for cache_key in old:
            self._remove(cache_key)
        self.dropped += len(old)
        return old

    def next_expiry(self) -> float | None:
        """When the oldest entry expires (entries are in last-use order)."""
        if not self._entries:
            return None
        return next(iter(self._entries.values())).last_used + self.ttl_s

    def clear(self) -> None:
        for cache_key in list(self._entries):
            self._remove(cache_key)
        self._held.clear()
        self._bytes = 0

    def _remove(self, cache_key: str) -> ParkedState | None:
        state = self._entries.pop(cache_key, None)
        if state is not None:
            self._bytes -= state.nbytes
            if self.listener is not None:
                self.listener(state, False)
        return state
