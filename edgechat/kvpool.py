"""The KV pool: engines whose sequences share fewer KV tokens than they could hold together.

Part of the scheduler's `Policy` (edgechat.policy), kept apart because only such engines need
it: admission by KV tokens claimed, evicting idle caches for room, and when a step's feeds do not
fit, holding back prompt chunks, then preempting the youngest answer (parked to resume, or
recomputed). With llama.cpp's buffer per sequence this never runs; the policy tests exercise it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from edgechat.sequences import Park, Plan, Request, Slot, Status

if TYPE_CHECKING:
    from edgechat.kvcache import HostCache
    from edgechat.sequences import EngineFacts

log = logging.getLogger("edgechat.policy")


class KvPool:
    """The pool's methods; the state is the Policy's."""

    engine: EngineFacts
    pool_limited: bool
    kv_budget_tokens: int
    host: HostCache | None
    sharing: Any  # edgechat.sharing.Sharing (a layer above this one)
    waiting: deque[Request]
    active: list[Request]
    resident: list[Slot]
    idle: OrderedDict[str, Slot]
    counts: dict[str, int]
    _sources: set[Slot]

    def _evict(self, session: str, plan: Plan) -> None:  # Policy's
        raise NotImplementedError

    def _unresident(self, slot: Slot) -> None:  # Policy's
        raise NotImplementedError

    def _kv_used(self) -> int:
        return sum(len(s.tokens) for s in self.resident)

    def _kv_claimed(self, exclude: Slot | None) -> int:
        """Tokens held, counting a request in service at its whole prompt so far (admission)."""
        return sum(
            len(s.tokens) if s.request is None else max(len(s.tokens), s.request.target_len())
            for s in self.resident
            if s is not exclude
        )

    def _pool_room(self, tokens: int, plan: Plan, exclude: Slot | None = None, claimed: bool = True) -> bool:
        """Whether `tokens` more fit the KV budget, evicting idle caches (LRU) for them."""
        if not self.pool_limited:
            return True
        while (self._kv_claimed(exclude) if claimed else self._kv_used()) + tokens > self.kv_budget_tokens:
            if not self.idle:
                return False
            self._evict(next(iter(self.idle)), plan)
        return True

    def _fit_pool(self, plan: Plan, now: float) -> None:
        """The KV filled up: this step's feeds must fit. Evict idle caches, then hold back the
        youngest prompt chunks, then preempt the youngest running requests (parked to host RAM
        to resume where they were, or recomputed), never failing anyone."""
        while plan.feeds and not self._pool_room(sum(len(f.tokens) for f in plan.feeds), plan, claimed=False):
            feed = plan.feeds[-1]
            if feed.request.status is Status.PREFILL and len(plan.feeds) > 1:
                plan.feeds.pop()
                continue
            victim = self.active[-1]
            plan.feeds = [f for f in plan.feeds if f.request is not victim]
            plan.admits = [a for a in plan.admits if a.request is not victim]
            self._preempt(victim, plan)

    def _preempt(self, request: Request, plan: Plan) -> None:
        slot = request.slot
        assert slot is not None
        self.active.remove(request)
        self._unresident(slot)
        self.sharing.settled(request)
        est = len(slot.tokens) * self.engine.kv_bytes_per_token
        kept = self.host is not None and slot.tokens and self.host.can_take(est)
        if slot.seq >= 0 and (kept or slot in self._sources):  # a copy's source: its parked bytes
            plan.parks.append(Park(slot, list(slot.tokens), request=request))
        elif slot.seq >= 0:
            plan.releases.append(slot)
        request.slot, request.status = None, Status.WAITING
        self.waiting.appendleft(request)
        self.counts["preemptions"] += 1
        log.info("KV full: request %d preempted (%d tokens)", request.id, len(slot.tokens))
