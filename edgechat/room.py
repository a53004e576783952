"""The room: the KV layout and every cache the engine and host RAM hold (vLLM's KVCacheManager role).

The layout is computed once, before the engine's context exists: llama.cpp's model is loaded, its
KV bytes per token and trained context become known, `layout()` splits --kv-budget into sequences
and the engine creates its context with them (no callback into the runtime). Then one `Room` per
scheduler owns what the sequences and host RAM hold:

- resident caches: every engine sequence given to an answer or keeping an idle conversation's cache;
- idle caches (LRU): a conversation that finished its turn keeps its sequence while nobody needs it
  (`keep_idle`); when someone does, the least recently used one is parked in host RAM or dropped;
- parked caches (edgechat.kvcache.HostCache, LRU in bytes): restored on the conversation's next turn;
- prefixes shared across conversations and the room's pinned prefix (edgechat.sharing).

`place` gives a request a sequence (its idle one, a restored one, a copy of a shared prefix, or a
fresh one); `keep_idle`, `release`, `drop` and `expire` end a cache's stay; `park_answer` takes a
sequence back from a running answer (time slicing), its cache parked (within --host-cache) for
that answer to resume from, whole, when it is placed again; `parked` folds the
saved bytes of a step's parks back in; `stats` returns a typed `RoomStats`. The planner
(edgechat.planner) asks the room and never touches a cache itself; the scheduler makes every
engine call the plan names. Only the scheduler's worker thread uses a Room.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgechat.config import Settings
from edgechat.config_values import parse_kv_budget
from edgechat.errors import ConfigError
from edgechat.kvcache import MIB, HostCache, ParkedState, default_host_cache_bytes, meminfo_bytes
from edgechat.prefixes import MIN_SHARED_TOKENS, is_pin
from edgechat.sequences import Admit, EngineFacts, Outputs, Park, Plan, Request, Slot, common_prefix
from edgechat.sharing import Sharing
from edgechat.stats import RoomStats

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ (llama_max_parallel_sequences)
KV_RAM_SHARE = 0.25  # the default --kv-budget takes at most this share of the RAM available at start


@dataclass(frozen=True)
class KvLayout:
    """Engine sequences and the tokens each holds, from --kv-budget and --max-running."""

    sequences: int
    tokens_per_sequence: int


def split_budget(budget_tokens: int, context_length: int, max_running: int) -> KvLayout:
    """Full contexts when the budget holds at least `max_running` of them (any beyond keep idle
    conversations' caches without parking), else `max_running` shorter ones, so that every answer
    generating at once has its own buffer."""
    sequences = min(MAX_SEQUENCES, max(max_running, budget_tokens // max(1, context_length)))
    return KvLayout(sequences, min(context_length, budget_tokens // sequences))


def budget_tokens(settings: Settings, bytes_per_token: int, context: int, running: int) -> int:
    """--kv-budget in tokens; by default `running` full contexts, at most a quarter of the RAM
    available now (but always one context)."""
    if settings.kv_budget is None:
        available = meminfo_bytes("MemAvailable")
        tokens = running * context
        if available is not None:
            tokens = min(tokens, max(context, int(available * KV_RAM_SHARE) // max(1, bytes_per_token)))
        return tokens
    tokens = parse_kv_budget(settings.kv_budget, bytes_per_token)
    if tokens < context:
        raise ConfigError(
            f"--kv-budget {settings.kv_budget} holds {tokens} tokens, less than one session's context of "
            f"{context}; raise it or lower --context-length"
        )
    return tokens


def layout(settings: Settings, bytes_per_token: int, context: int, running: int) -> KvLayout:
    """The KV layout of a llama.cpp engine whose model takes `bytes_per_token` a cached token and
    holds at most `context` tokens a sequence, serving `running` answers at once."""
    return split_budget(budget_tokens(settings, bytes_per_token, context, running), context, running)


class Room:
    """Resident, idle and parked caches of one engine; see the module docstring."""

    def __init__(
        self,
        engine: EngineFacts,
        *,
        host_cache_bytes: int | None,
        cache_ttl_s: float,
        available_ram: Callable[[], int | None] = lambda: meminfo_bytes("MemAvailable"),
        share_prefixes: bool = True,
    ) -> None:
        """`host_cache_bytes` None: the default share of available RAM (--host-cache); engines
        without a prefix cache park nothing."""
        self.engine = engine
        self.cache_ttl_s = cache_ttl_s
        self.host: HostCache | None = None
        if engine.prefix_cache:
            size = default_host_cache_bytes() if host_cache_bytes is None else host_cache_bytes
            self.host = HostCache(size, cache_ttl_s, available_ram=available_ram)
        self.sharing = Sharing(enabled=share_prefixes and engine.prefix_cache)
        if self.host is not None:
            self.host.listener = self.sharing.record_changed
        self.resident: list[Slot] = []  # every slot holding (or about to hold) an engine sequence
        self.idle: OrderedDict[str, Slot] = OrderedDict()  # cache key -> its idle slot, LRU first
        self.to_release: list[Slot] = []  # freed outside a step's decisions; released by the next execute
        self.parks = 0
        self._placed: set[Slot] = set()  # this step's: sequences that get their cache now, no source yet
        self._sources: set[Slot] = set()  # sequences copied from this step: parked if evicted

    # ---- a step's placements ----

    def begin_step(self, plan: Plan) -> None:
        """A new step's decisions: the slots freed since the last one are released first."""
        plan.releases.extend(self.to_release)
        self.to_release = []
        self._placed, self._sources = set(), set()

    def owns_cache(self, cache_key: str | None) -> bool:
        """Whether `cache_key` has a cache of its own here, idle or parked."""
        return cache_key is not None and (cache_key in self.idle or cache_key in (self.host or ()))

    def place(self, request: Request, now: float, plan: Plan) -> Admit | None:
        """A sequence for `request`: its cache key's idle one, one restored from host RAM, a copy of
        a shared prefix, or a fresh one (parking or evicting the least recently used idle cache
        for it); None when every sequence is busy. A parked cache leaves host RAM only once the
        request is placed. A time-sliced answer goes on from its own parked cache, restored whole."""
        target = request.target()
        cache_key = request.cache_key
        resume = request.resume
        idle = self.idle.pop(cache_key, None) if cache_key is not None and resume is None else None
        parked = None
        if idle is None and resume is None and cache_key is not None and self.host is not None:
            parked = self.host.get(cache_key)
        # Before any eviction: the least recently used cache may be the best source (then its
        # parked copy is the source: the scheduler saves it before this admit runs).
        source = self.sharing.find(target, self._placed) if idle is None and resume is None else None
        if source is not None and source.slot is not None:
            self._sources.add(source.slot)
        if idle is None and not self._free_sequence(plan):
            return None
        if resume is not None:
            slot, restore, kind = Slot(tokens=list(resume.tokens)), resume, "resumed"
            keep = common_prefix(resume.tokens, target)
            self.forget_resume(request)
        elif idle is not None:
            slot, restore, keep = idle, None, min(common_prefix(idle.tokens, target), len(target) - 1)
            kind = "reused"
        elif parked is not None:
            slot, restore = Slot(tokens=list(parked.tokens)), parked  # restored whole, then cut to `keep`
            keep = min(common_prefix(parked.tokens, target), len(target) - 1)
            kind = "restored"
            if keep == 0:  # nothing in common: not worth restoring
                slot, restore = Slot(), None
        else:
            slot, restore, keep, kind = Slot(), None, 0, "fresh"
        if source is not None and keep < MIN_SHARED_TOKENS and source.tokens > keep:
            slot, restore, keep, kind = Slot(tokens=list(source.held)), source.record, source.tokens, "shared"
        else:
            source = None
            if parked is not None:
                self.host.take(cache_key)  # type: ignore[union-attr, arg-type] — restored, or useless: gone
        if source is not None and source.slot is not None and source.slot not in self.resident:
            if not any(park.slot is source.slot for park in plan.parks):  # evicted and dropped
                slot, keep, kind, source = Slot(), 0, "fresh", None
        slot.cache_key, slot.request, slot.last_used = cache_key, request, now
        if slot not in self.resident:
            self.resident.append(slot)
        del slot.tokens[keep:]
        self.sharing.cut(slot)
        self._placed.add(slot)
        share = source.slot if source is not None else None
        return Admit(request, slot, keep, restore, share=share, kind=kind if keep else "fresh")

    def waits_for_prefix(self, request: Request) -> bool:
        """A newcomer without a cache of its own whose prefix someone is prefilling right now."""
        own = request.resume is not None or self.owns_cache(request.cache_key)
        return not own and self.sharing.should_wait(request, self._placed)

    def _free_sequence(self, plan: Plan) -> bool:
        """Whether an admit this step can open a sequence, evicting an idle cache if needed."""
        if len(self.resident) < self.engine.max_sequences:
            return True
        if not self.idle:
            return False
        self.park(next(iter(self.idle)), plan)
        return True

    # ---- the end of a cache's stay ----

    def park(self, cache_key: str, plan: Plan) -> None:
        """Free an idle slot: park its cache in host RAM when it will be kept, else drop it. A
        pinned prefix, and the source of a copy this step (the copy is made from the parked
        bytes: parks run first), are always parked."""
        slot = self.idle.pop(cache_key)
        self._unresident(slot)
        est = len(slot.tokens) * self.engine.kv_bytes_per_token
        kept = self.host is not None and slot.tokens and self.host.can_take(est)
        if is_pin(cache_key) or slot in self._sources or kept:
            plan.parks.append(Park(slot, list(slot.tokens), cache_key=cache_key))
        else:
            plan.releases.append(slot)

    def can_park(self, slot: Slot) -> bool:
        """Whether host RAM can take `slot`'s cache now (else taking its sequence back would mean
        reading the answer again: time slicing does not do that)."""
        held = len(slot.tokens) * self.engine.kv_bytes_per_token
        return self.host is not None and held > 0 and self.host.can_take(held)

    def park_answer(self, request: Request, plan: Plan) -> None:
        """Time slicing: take `request`'s sequence back mid-answer. Its cache is parked for the
        request itself (`request.resume`, set by `parked`), outside the idle caches' LRU, and `place`
        restores it whole when the request's turn comes round again."""
        slot = request.slot
        assert slot is not None and slot.seq >= 0
        self._unresident(slot)
        self.sharing.settled(request)
        plan.parks.append(Park(slot, list(slot.tokens), cache_key=request.cache_key or "", request=request))

    def forget_resume(self, request: Request) -> None:
        """`request`'s parked cache is restored, or no longer needed: its host RAM is free again."""
        if request.resume is not None and self.host is not None:
            self.host.release(request.resume)
        request.resume = None

    def keep_idle(self, slot: Slot, cache_key: str, now: float, plan: Plan | None) -> None:
        """A finished answer's cache stays in its sequence for the conversation's next turn."""
        slot.request = None
        old = self.idle.pop(cache_key, None)
        if old is not None:  # two requests of one cache key: the newer cache wins
            self.release(old, plan)
        if self.host is not None:
            self.host.drop(cache_key)
        slot.cache_key, slot.last_used = cache_key, now
        self.idle[cache_key] = slot

    def release(self, slot: Slot, plan: Plan | None) -> None:
        """Free `slot`'s sequence: in this step's plan, or the next step's when outside one."""
        slot.request = None
        self._unresident(slot)
        (plan.releases if plan is not None else self.to_release).append(slot)

    def drop(self, cache_key: str, plan: Plan) -> None:
        """Forget a cache key's cache wherever it is (New chat, a closed tab, its TTL)."""
        slot = self.idle.pop(cache_key, None)
        if slot is not None:
            self.release(slot, plan)
        if self.host is not None:
            self.host.drop(cache_key)

    def expire(self, now: float, plan: Plan) -> None:
        """Idle and parked caches unused for longer than the cache TTL (--session-ttl) are dropped."""
        old = [s for s, slot in self.idle.items() if now - slot.last_used > self.cache_ttl_s and not is_pin(s)]
        for cache_key in old:
            self.drop(cache_key, plan)
        if self.host is not None:
            self.host.expire(now)

    def next_expiry(self) -> float | None:
        """When the oldest idle or parked cache outlives the cache TTL."""
        times = [slot.last_used + self.cache_ttl_s for slot in list(self.idle.values())[:1]]
        if self.host is not None and self.host.next_expiry() is not None:
            times.append(self.host.next_expiry())  # type: ignore[arg-type]
        return min(times) if times else None

    def parked(self, plan: Plan, out: Outputs, now: float) -> None:
        """The step's parks, saved by the engine: kept in host RAM (a pin outside its LRU)."""
        for park in plan.parks:
            data = out.saved.get(park)
            if data is None:
                continue  # a sliced answer without its bytes re-reads its prompt and answer so far
            state = ParkedState(park.cache_key, park.tokens, data, now, out.sampling.get(park))
            if park.request is not None and self.host is not None:  # only engines with a host cache slice
                self.host.hold(state)
                park.request.resume = state
            elif is_pin(park.cache_key):
                self.sharing.pin(state)
            elif self.host is not None and self.host.put(state):
                self.parks += 1

    def _unresident(self, slot: Slot) -> None:
        self.resident.remove(slot)
        self.sharing.untrack(slot)

    # ---- figures and shutdown ----

    def stats(self) -> RoomStats:
        host = self.host
        return RoomStats(
            max_sequences=self.engine.max_sequences,
            context_per_answer=self.engine.max_len,
            kv_tokens_budget=self.engine.max_sequences * self.engine.max_len,
            kv_tokens_used=sum(len(s.tokens) for s in self.resident),
            sequences_in_use=len(self.resident),  # to_release ones are free: the next step frees them
            sessions_cached=len(self.idle),
            sessions_parked=len(host) if host is not None else 0,
            parked_mib=host.nbytes / MIB if host is not None else 0.0,
            host_cache_mib=host.capacity_bytes / MIB if host is not None else 0.0,
            host_ram_short=host.ram_short if host is not None else False,
            sessions_dropped=host.dropped if host is not None else 0,
            parks=self.parks,
            **self.sharing.figures([slot for cache_key, slot in self.idle.items() if is_pin(cache_key)]),
        )

    def drain(self) -> list[Slot]:
        """Shutdown: every slot to release; nothing is kept."""
        slots = [*self.resident, *self.to_release]
        self.resident, self.to_release = [], []
        self.idle.clear()
        if self.host is not None:
            self.host.clear()
        return slots
