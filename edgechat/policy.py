"""The scheduler's decisions and bookkeeping, without threads and without engine calls.

`Policy` owns the state the scheduler's worker thread keeps: the waiting queue, the requests in
service, the slots (engine sequences) and what their caches hold, idle sessions, the host-RAM
cache of parked sessions, counters. Each step, `decide()` turns it into a `Plan` (finish cancelled
and expired requests, admit waiting ones FIFO, park or evict idle caches for room, pick the
feeds) and `update()` folds what the engine did back in (tokens become events, requests finish).
It sees the engine's facts only (sizes and capability flags, an `EngineFacts`), never the engine:
every call into it is the scheduler's execute step.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from typing import Any

from edgechat.kvcache import MIB, HostCache, ParkedState
from edgechat.prefixes import MIN_SHARED_TOKENS, is_pin
from edgechat.sequences import Admit, EngineFacts, Feed, Outputs, Park, Plan, Request, Slot, Status, common_prefix
from edgechat.sharing import Sharing
from edgechat.types import Failed, Finished, FinishReason, Queued, Token, TokenEvent, TokenLogprobs

log = logging.getLogger(__name__)

SEEN_SESSIONS = 4096  # sessions remembered to count re-prefilled turns


class Policy:
    """Decide / update for one engine; see the module docstring."""

    def __init__(
        self,
        engine: EngineFacts,
        *,
        max_running: int,
        host: HostCache | None,
        session_ttl_s: float,
        share_prefixes: bool = True,
    ) -> None:
        self.engine = engine
        self.max_running = max_running
        self.session_ttl_s = session_ttl_s
        self.host = host
        self.sharing = Sharing(enabled=share_prefixes and engine.prefix_cache)
        if host is not None:
            host.listener = self.sharing.record_changed
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []  # PREFILL or RUNNING, in admission order (last = youngest)
        self.resident: list[Slot] = []  # every slot holding (or about to hold) an engine sequence
        self.idle: OrderedDict[str, Slot] = OrderedDict()  # session -> its idle slot, LRU first
        self.to_release: list[Slot] = []  # freed by update; released by the next execute
        self._placed: set[Slot] = set()  # this step's: see decide
        self._sources: set[Slot] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()  # sessions that completed a turn
        self._rr = 0  # round-robin offset for engines that batch fewer than all running
        self.counts = dict.fromkeys(("completed", "cancelled", "errors", "parks", "restore_failures"), 0)
        self.turns = dict.fromkeys(("reused", "restored", "reprefilled"), 0)
        self.service_s = 10.0  # moving average of a request's time in service, for queue ETAs
        self.outbox: list[tuple[Request, TokenEvent]] = []  # delivered once the step's stats are out

    def _emit(self, request: Request, event: TokenEvent) -> None:
        self.outbox.append((request, event))

    def deliver(self) -> None:
        """Hand the step's events to their readers, after `snapshot()`: a reader that sees its
        request finish then finds the engine's figures already counting it."""
        outbox, self.outbox = self.outbox, []
        for request, event in outbox:
            request.events.put(event)

    def busy(self) -> bool:
        return bool(self.waiting or self.active or self.to_release)

    def next_expiry(self) -> float | None:
        """When the oldest idle or parked cache outlives the session TTL."""
        times = [slot.last_used + self.session_ttl_s for slot in list(self.idle.values())[:1]]
        if self.host is not None and self.host.next_expiry() is not None:
            times.append(self.host.next_expiry())  # type: ignore[arg-type]
        return min(times) if times else None

    # ---- decide ----

    def decide(self, inbox: deque[Request], forget: list[str], now: float) -> Plan:
        plan = Plan(releases=self.to_release)
        self.to_release = []
        for session in forget:
            self._drop_session(session, plan, forgotten=True)
        self.waiting.extend(inbox)
        self._expire(now, plan)
        for request in [*self.waiting, *self.active]:
            if request.cancelled.is_set():
                self._finish(request, request.cancel_reason, now, plan)
            elif request.deadline is not None and now > request.deadline:
                self._finish(request, FinishReason.TIMEOUT, now, plan)
        self._placed: set[Slot] = set()  # sequences that get their cache this step: no source yet
        self._sources: set[Slot] = set()  # sequences copied from this step: parked if evicted
        waiting_for_prefix: list[Request] = []  # stay in line while someone prefills their prefix
        while self.waiting and len(self.active) < self.max_running:
            if self._waits_for_prefix(self.waiting[0]):
                waiting_for_prefix.append(self.waiting.popleft())
                continue
            admit = self._place(self.waiting[0], now, plan)
            if admit is None:
                break  # FIFO: nobody overtakes the head of the queue
            self.waiting.popleft()
            plan.admits.append(admit)
        self.waiting.extendleft(reversed(waiting_for_prefix))
        self._report_queue()
        self._plan_feeds(plan)
        return plan

    def _place(self, request: Request, now: float, plan: Plan) -> Admit | None:
        """A sequence for `request`: its session's idle one, one restored from host RAM, or a
        fresh one (parking or evicting the least recently used idle cache for it)."""
        target = request.target()
        session = request.session
        idle = self.idle.pop(session, None) if session is not None else None
        parked = None
        if idle is None and session is not None and self.host is not None:
            parked = self.host.take(session)
        # Before any eviction: the least recently used cache may be the best source (then its
        # parked copy is the source: the scheduler saves it before this admit runs).
        source = self.sharing.find(target, self._placed) if idle is None else None
        if source is not None and source.slot is not None:
            self._sources.add(source.slot)
        if idle is None and not self._free_sequence(plan):
            if parked is not None:
                self.host.put(parked)  # type: ignore[union-attr] — not this step: back it goes
            return None
        if idle is not None:
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
            if parked is not None:
                self.host.put(parked)  # type: ignore[union-attr] — its own record had less to give
                parked = None
            slot, restore, keep, kind = Slot(tokens=list(source.held)), source.record, source.tokens, "shared"
        else:
            source = None
        if source is not None and source.slot is not None and source.slot not in self.resident:
            if not any(park.slot is source.slot for park in plan.parks):  # evicted and dropped
                slot, keep, kind, source = Slot(), 0, "fresh", None
        if session is not None and kind != "shared":
            self._count_turn(kind if keep else "fresh", session)
        slot.session, slot.request, slot.last_used = session, request, now
        if slot not in self.resident:
            self.resident.append(slot)
        del slot.tokens[keep:]
        self.sharing.cut(slot)
        self._placed.add(slot)
        request.slot = slot
        if request.stats.started_at is None:
            request.stats.started_at = now
            request.stats.reused_tokens = 0 if source else keep
            request.stats.shared_tokens = keep if source else 0
        self.active.append(request)
        request.settle()
        self.sharing.promise(request)
        return Admit(request, slot, keep, restore, share=source.slot if source else None)

    def _waits_for_prefix(self, request: Request) -> bool:
        own = request.session in self.idle or request.session in (self.host or ())
        return not own and self.sharing.should_wait(request, self._placed)

    def _unresident(self, slot: Slot) -> None:
        self.resident.remove(slot)
        self.sharing.untrack(slot)

    def _count_turn(self, kind: str, session: str) -> None:
        if kind != "fresh":
            self.turns[kind] += 1
        elif session in self._seen:
            self.turns["reprefilled"] += 1

    def _free_sequence(self, plan: Plan) -> bool:
        """Whether an admit this step can open a sequence, evicting an idle cache if needed."""
        if len(self.resident) < self.engine.max_sequences:
            return True
        if not self.idle:
            return False
        self._evict(next(iter(self.idle)), plan)
        return True

    def _kv_used(self) -> int:
        return sum(len(s.tokens) for s in self.resident)

    def _evict(self, session: str, plan: Plan) -> None:
        """Free an idle slot: park its cache in host RAM when it will be kept, else drop it. A
        pinned prefix, and the source of a copy this step (the copy is made from the parked
        bytes: parks run first), are always parked."""
        slot = self.idle.pop(session)
        self._unresident(slot)
        est = len(slot.tokens) * self.engine.kv_bytes_per_token
        kept = self.host is not None and slot.tokens and self.host.can_take(est)
        if is_pin(session) or slot in self._sources or kept:
            plan.parks.append(Park(slot, list(slot.tokens), session=session))
        else:
            plan.releases.append(slot)

    def _drop_session(self, session: str, plan: Plan, forgotten: bool = False) -> None:
        slot = self.idle.pop(session, None)
        if slot is not None:
            self._unresident(slot)
            plan.releases.append(slot)
        if self.host is not None:
            self.host.drop(session)
        if forgotten:
            self._seen.pop(session, None)

    def _expire(self, now: float, plan: Plan) -> None:
        """Idle and parked caches unused for longer than the session TTL are dropped."""
        old = [s for s, slot in self.idle.items() if now - slot.last_used > self.session_ttl_s and not is_pin(s)]
        for session in old:
            self._drop_session(session, plan)
        if self.host is not None:
            self.host.expire(now)

    def _plan_feeds(self, plan: Plan) -> None:
        """Every running request's next token, then prompt chunks of the prefilling ones in
        admission order within the step's prompt-token budget (several newcomers per step)."""
        running = [r for r in self.active if r.status is Status.RUNNING]
        width = self.engine.max_batch
        if len(running) > width:  # round-robin so no sequence starves on narrow engines
            start = self._rr % len(running)
            running = (running[start:] + running[:start])[:width]
            self._rr += width
        plan.feeds = [Feed(r, [r.generated[-1]], True) for r in running]
        budget = self.engine.prefill_chunk  # prompt tokens this step, on top of the decodes
        for request in self.active:
            if request.status is not Status.PREFILL:
                continue
            if budget is not None and budget <= 0:
                break
            held, total = len(request.slot.tokens), request.target_len()  # type: ignore[union-attr]
            end = total if budget is None else min(total, held + budget)
            plan.feeds.append(Feed(request, request.target()[held:end], end == total))
            if budget is not None:
                budget -= end - held
            if not self.engine.batch_prefill:
                break  # one prompt per step on engines that prefill alone

    # ---- update ----

    def update(self, plan: Plan, out: Outputs, now: float) -> int:
        """Fold the engine's outputs in; how many tokens were produced."""
        for park in plan.parks:
            data = out.saved.get(park)
            if is_pin(park.session):
                if data is not None:
                    self.sharing.pin(ParkedState(park.session, park.tokens, data, now))  # type: ignore[arg-type]
            elif (
                data is not None
                and self.host is not None
                and self.host.put(ParkedState(park.session, park.tokens, data, now))
            ):  # type: ignore[arg-type]
                self.counts["parks"] += 1
        for admit in plan.admits:
            request = admit.request
            if request in out.failed:
                continue
            del admit.slot.tokens[out.kept[request] :]
            self.sharing.cut(admit.slot)
            if request in out.restore_failed:
                self.counts["restore_failures"] += 1
                if not request.stats.shared_tokens:  # a shared record is not the session's turn
                    self.turns["restored"] -= 1
                    self.turns["reprefilled"] += 1
                log.warning("restoring a parked cache failed: request %d re-prefills", request.id)
            request.stats.reused_tokens = min(request.stats.reused_tokens, len(admit.slot.tokens))
            request.stats.shared_tokens = min(request.stats.shared_tokens, len(admit.slot.tokens))
            self.sharing.count(request)
            request.settle()
        for request, message in out.failed.items():
            log.error("request %d failed: %s", request.id, message)
            self._fail(request, message, now)
        produced = 0
        for feed in plan.feeds:
            request = feed.request
            if request not in out.tokens or request.status is Status.FINISHED:
                continue
            if request.status is Status.PREFILL:
                self.sharing.tokens["prefilled"] += len(feed.tokens)
            request.slot.tokens.extend(feed.tokens)  # type: ignore[union-attr]
            self.sharing.track(request.slot)  # type: ignore[arg-type]
            token = out.tokens[request]
            if token is not None:
                self.sharing.settled(request)
                if request.stats.first_token_at is None:
                    request.stats.first_token_at = now
                request.status = Status.RUNNING
                self._accept(request, token, now, out.logprobs.get(request))
                produced += 1
        return produced

    def _accept(self, request: Request, token: int, now: float, logprobs: TokenLogprobs | None = None) -> None:
        if token in request.stop_ids:
            self._finish(request, FinishReason.STOP, now)
            return
        request.generated.append(token)
        request.stats.completion_tokens += 1
        self._emit(request, Token(token, logprobs))
        if len(request.generated) >= request.max_new_tokens:
            self._finish(request, FinishReason.LENGTH, now)

    def _fail(self, request: Request, message: str, now: float) -> None:
        self.counts["errors"] += 1
        self._emit(request, Failed(message))
        request.session = None  # its cache state is unknown: never reuse it
        self._finish(request, FinishReason.ERROR, now, notify=False)

    def _finish(
        self, request: Request, reason: FinishReason, now: float, plan: Plan | None = None, notify: bool = True
    ) -> None:
        if request.status is Status.FINISHED:
            return
        self.sharing.settled(request)
        was_waiting = request.status is Status.WAITING
        if was_waiting:
            self.waiting.remove(request)
        else:
            self.active.remove(request)
            slot = request.slot
            request.slot = None
            if slot is not None:
                slot.request = None
                if request.session is not None and reason.keeps_cache and self.engine.prefix_cache:
                    self._keep_idle(slot, request.session, now, plan)
                else:
                    self._unresident(slot)
                    (plan.releases if plan is not None else self.to_release).append(slot)
        request.status = Status.FINISHED
        stats = request.stats
        stats.finished_at = now
        stats.finish_reason = reason
        if reason is FinishReason.CANCELLED:
            self.counts["cancelled"] += 1
        elif reason is not FinishReason.ERROR and not is_pin(request.session):  # a pin is no answer
            self.counts["completed"] += 1
        if not was_waiting and stats.started_at is not None:
            self.service_s = 0.8 * self.service_s + 0.2 * (now - stats.started_at)
        if notify:
            self._emit(request, Finished(reason))

    def _keep_idle(self, slot: Slot, session: str, now: float, plan: Plan | None) -> None:
        old = self.idle.pop(session, None)
        if old is not None:  # two requests of one session: the newer cache wins
            self._unresident(old)
            (plan.releases if plan is not None else self.to_release).append(old)
        if self.host is not None:
            self.host.drop(session)
        slot.session, slot.last_used = session, now
        self.idle[session] = slot
        self._seen[session] = None
        self._seen.move_to_end(session)
        while len(self._seen) > SEEN_SESSIONS:
            self._seen.popitem(last=False)

    def _report_queue(self) -> None:
        for position, request in enumerate(self.waiting, start=1):
            if request.last_position != position:
                request.last_position = position
                rounds = math.ceil(position / max(1, self.max_running))
                self._emit(request, Queued(position, rounds * self.service_s))

    def snapshot(self) -> dict[str, Any]:
        """The figures `Scheduler.stats()` returns, as of the end of a step."""
        host = self.host
        return {
            "running": sum(r.status is Status.RUNNING for r in self.active),
            "prefilling": sum(r.status is Status.PREFILL for r in self.active),
            "waiting": len(self.waiting),
            "idle_sessions": len(self.idle),
            "sequences_in_use": len(self.resident),  # to_release ones are free: the next step frees them
            "kv_tokens_used": self._kv_used(),
            "kv_tokens_budget": self.engine.max_sequences * self.engine.max_len,
            "max_running": self.max_running,
            "max_sequences": self.engine.max_sequences,
            "context_per_answer": self.engine.max_len,
            "sessions_cached": len(self.idle),
            "sessions_parked": len(host) if host is not None else 0,
            "parked_mib": host.nbytes / MIB if host is not None else 0.0,
            "host_cache_mib": host.capacity_bytes / MIB if host is not None else 0.0,
            "host_ram_short": host.ram_short if host is not None else False,
            "sessions_dropped": host.dropped if host is not None else 0,
            "turns_reused": self.turns["reused"],
            "turns_restored": self.turns["restored"],
            "turns_reprefilled": self.turns["reprefilled"],
            **self.sharing.figures([slot for session, slot in self.idle.items() if is_pin(session)]),
            **self.counts,
        }

    def drain(self) -> tuple[list[Request], list[Slot]]:
        """Shutdown: every request still waiting or in service, and every slot to release."""
        pending = [*self.waiting, *self.active]
        slots = [*self.resident, *self.to_release]
        self.waiting.clear()
        self.active, self.resident, self.to_release = [], [], []
        self.idle.clear()
        if self.host is not None:
            self.host.clear()
        return pending, slots
