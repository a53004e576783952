"""The room's shared prefixes, as edgechat.room sees them (edgechat.prefixes does the
indexing): which cache a newcomer's prompt can start from, whether a prefix it wants is being
prefilled right now, the room's pinned prefixes, and the prompt-token counters.

Sources, cheapest first at equal length: a record in host RAM (a parked conversation or a pinned prefix:
one restore), then a resident sequence, running or idle (its cache saved and restored into the
newcomer's). Measured on the 2-core dev box (README, "Prefixes shared across sessions"): llama.cpp's
own `llama_memory_seq_cp` between sequences with a KV buffer each copies the whole buffer at the
next decode, whatever the prefix, and leaves the copy pending until then; the save / restore pair
copies only the cache's tokens and is done when it returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from edgechat.kvcache import ParkedState
from edgechat.prefixes import BLOCK, MIN_SHARED_TOKENS, PrefixIndex
from edgechat.sequences import Request, Slot, Status, common_prefix


@dataclass(frozen=True, eq=False)
class Source:
    """Copy the first `tokens` of `slot`'s cache, or of `record` restored."""

    tokens: int
    slot: Slot | None = None
    record: ParkedState | None = None

    @property
    def held(self) -> list[int]:
        return (self.slot or self.record).tokens  # type: ignore[union-attr]


class Sharing:
    """Indexes of resident caches, parked records and prompts being prefilled; the pinned prefixes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.resident = PrefixIndex()  # Slot -> its tokens
        self.parked = PrefixIndex()  # ParkedState (host records and pins) -> its tokens
        self.promised = PrefixIndex()  # Request in PREFILL -> its prompt
        self.pins: dict[str, ParkedState] = {}
        self.tokens = dict.fromkeys(("reused", "shared", "prefilled"), 0)  # prompt tokens, all requests
        self.turns_shared = 0
        self.lookups = 0
        self.lookup_s = 0.0

    # ---- keeping the indexes true ----

    def track(self, slot: Slot) -> None:
        """`slot`'s cache grew (or was just cut: `cut` first)."""
        if self.enabled:
            self.resident.put(slot, slot.tokens)

    def cut(self, slot: Slot) -> None:
        self.resident.cut(slot, len(slot.tokens))

    def untrack(self, slot: Slot) -> None:
        self.resident.remove(slot)

    def record_changed(self, record: ParkedState, added: bool) -> None:
        """HostCache's listener: a parked record was kept or has gone."""
        (self.record_added if added else self.record_removed)(record)

    def record_added(self, record: ParkedState) -> None:
        if self.enabled:
            self.parked.put(record, record.tokens)

    def record_removed(self, record: ParkedState) -> None:
        if self.pins.get(record.cache_key) is not record:
            self.parked.remove(record)

    def promise(self, request: Request) -> None:
        """`request` is prefilling its prompt: a newcomer with the same prefix waits for it."""
        if self.enabled and request.status is Status.PREFILL:
            self.promised.put(request, request.prompt)

    def settled(self, request: Request) -> None:
        self.promised.remove(request)

    def pin(self, record: ParkedState) -> None:
        """A pinned prefix parked in host RAM: never dropped for room or age."""
        old = self.pins.pop(record.cache_key, None)
        if old is not None:
            self.parked.remove(old)
        self.pins[record.cache_key] = record
        self.parked.put(record, record.tokens)

    # ---- lookups ----

    def find(self, target: Sequence[int], exclude: set[Slot]) -> Source | None:
        """The longest prefix of `target` (all but its last token) any cache holds, if at least
        MIN_SHARED_TOKENS; a record wins a tie (one restore, no save)."""
        if not self.enabled:
            return None
        began = time.perf_counter()
        limit = len(target) - 1
        best: Source | None = None
        for index in (self.parked, self.resident):
            for length, owners in index.holders(target):
                if best is not None and length + BLOCK <= best.tokens:
                    break
                for owner in owners:
                    if owner in exclude or (isinstance(owner, Slot) and owner.seq < 0):
                        continue
                    n = min(common_prefix(owner.tokens, target), limit)  # type: ignore[attr-defined]
                    if n >= MIN_SHARED_TOKENS and (best is None or n > best.tokens):
                        slot = owner if isinstance(owner, Slot) else None
                        best = Source(n, slot, None if slot else owner)  # type: ignore[arg-type]
                    break
                if best is not None:
                    break
        self.lookups += 1
        self.lookup_s += time.perf_counter() - began
        return best

    def should_wait(self, request: Request, exclude: set[Slot]) -> bool:
        """A newcomer (without a cache of its own) whose prompt starts with what another request is
        prefilling now waits for it, a few steps, and then copies it rather than prefilling the
        same tokens alongside. Others in the queue go ahead meanwhile."""
        if not self.enabled:
            return False
        source = self.find(request.target(), exclude)
        return self.in_flight(request.target(), source.tokens if source else 0)

    def in_flight(self, target: Sequence[int], have: int) -> bool:
        """Whether a request now prefilling will soon hold a longer prefix of `target` (at least
        MIN_SHARED_TOKENS) than the `have` tokens available now: then waiting the few steps its
        prefill takes beats prefilling the same tokens twice."""
        if not self.enabled:
            return False
        for _, owners in self.promised.holders(target):
            for request in owners:
                if request.status is not Status.PREFILL:  # type: ignore[attr-defined]
                    self.promised.remove(request)
                    continue
                held = len(request.slot.tokens) if request.slot is not None else 0  # type: ignore[attr-defined]
                n = min(common_prefix(request.prompt, target), len(target) - 1)  # type: ignore[attr-defined]
                if n >= MIN_SHARED_TOKENS and n > max(have, held):
                    return True
            return False
        return False

    def count(self, request: Request) -> None:
        """A request's prompt tokens, once admitted: from its own cache, from another's."""
        self.tokens["reused"] += request.stats.reused_tokens
        self.tokens["shared"] += request.stats.shared_tokens
        self.turns_shared += request.stats.shared_tokens > 0

    def figures(self, resident_pins: Sequence[Slot]) -> dict[str, float]:
        """The counters, and the pinned prefixes: parked ones and `resident_pins` (in a sequence)."""
        pinned = [*(r.tokens for r in self.pins.values()), *(s.tokens for s in resident_pins)]
        return {
            "prompt_tokens_reused": self.tokens["reused"],
            "prompt_tokens_shared": self.tokens["shared"],
            "prompt_tokens_prefilled": self.tokens["prefilled"],
            "turns_shared": self.turns_shared,
            "pinned_prefixes": len(pinned),
            "pinned_tokens": sum(map(len, pinned)),
            "prefix_lookup_us": round(1e6 * self.lookup_s / self.lookups, 1) if self.lookups else 0.0,
        }
