"""The scheduler's decisions, without threads, without engine calls and without caches.

`Planner` keeps the waiting queue, the requests in service, the answers' counters and the turn
counts; every KV cache is the room's (edgechat.room), which the planner asks for a sequence. Each
step, `decide()` turns that state into a `Plan` (finish cancelled and expired requests, take a
place back from an answer whose time slice is up while people wait, admit waiting ones FIFO where
the room places them, pick the feeds) and `update()` folds what the engine
did back in (tokens become events, requests finish). It sees the engine's facts only (sizes and
capability flags, an `EngineFacts`), never the engine: every call into it is the scheduler's
execute step. In vLLM's terms this is the Scheduler's schedule() / update_from_output(), the room
its KVCacheManager, and edgechat's `Scheduler` (edgechat.scheduler) the loop that owns the engine.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from dataclasses import replace

from edgechat.prefixes import is_pin
from edgechat.room import Room
from edgechat.sequences import Admit, EngineFacts, Feed, Outputs, Plan, Request, Slot, Status
from edgechat.stats import BackendStats, SchedulerStats
from edgechat.types import Failed, Finished, FinishReason, Queued, Token, TokenEvent, TokenLogprobs

log = logging.getLogger(__name__)

SEEN_CACHE_KEYS = 4096  # cache keys remembered to count re-prefilled turns


class Planner:
    """Decide / update for one engine; see the module docstring."""

    def __init__(self, engine: EngineFacts, room: Room, *, max_running: int, time_slice: int = 0) -> None:
        self.engine = engine
        self.room = room
        self.max_running = max_running
        self.time_slice = time_slice  # tokens per turn on a sequence while people wait; 0 = FIFO
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []  # PREFILL or RUNNING, in admission order (last = youngest)
        self._seen: OrderedDict[str, None] = OrderedDict()  # cache keys that completed a turn
        self._rr = 0  # round-robin offset for engines that batch fewer than all running
        self.counts = dict.fromkeys(("completed", "cancelled", "errors", "restore_failures", "slices"), 0)
        self.turns = dict.fromkeys(("reused", "restored", "reprefilled"), 0)
        # Queue ETAs: moving averages of a step's time while busy (a token of every running answer)
        # and of an answer's tokens (None until one ends: the answers in service's maximum then).
        self.step_s = 0.1
        self.answer_tokens: float | None = None
        self._last_update: float | None = None
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
        return bool(self.waiting or self.active or self.room.to_release)

    def lose_sequences(self, live: int) -> None:
        """A TPU of several went out: `live` sequences are left, and as many answers at once."""
        self.engine = self.room.engine = replace(self.engine, max_sequences=live)
        self.max_running = min(self.max_running, live)

    # ---- decide ----

    def decide(self, inbox: deque[Request], forget: list[str], now: float) -> Plan:
        plan = Plan()
        self.room.begin_step(plan)
        for cache_key in forget:
            self.room.drop(cache_key, plan)
            self._seen.pop(cache_key, None)
        if not self.active:
            self._last_update = None  # an idle gap is no step
        self.waiting.extend(inbox)
        self.room.expire(now, plan)
        for request in [*self.waiting, *self.active]:
            if request.cancelled.is_set():
                self._finish(request, request.cancel_reason, now, plan)
            elif request.deadline is not None and now > request.deadline:
                self._finish(request, FinishReason.TIMEOUT, now, plan)
        sliced = self._slice(plan)  # back in line after this step's admits: round-robin
        waiting_for_prefix: list[Request] = []  # stay in line while someone prefills their prefix
        while self.waiting and len(self.active) < self.max_running:
            if self.room.waits_for_prefix(self.waiting[0]):
                waiting_for_prefix.append(self.waiting.popleft())
                continue
            admit = self._place(self.waiting[0], now, plan)
            if admit is None:
                break  # FIFO: nobody overtakes the head of the queue
            self.waiting.popleft()
            plan.admits.append(admit)
        self.waiting.extendleft(reversed(waiting_for_prefix))
        self.waiting.extend(sliced)
        self._report_queue()
        self._plan_feeds(plan)
        return plan

    def _slice(self, plan: Plan) -> list[Request]:
        """Time slicing (--time-slice): while more people wait than there are free places, an
        answer that has made `time_slice` tokens since it got its sequence gives it up: the room
        parks its cache in host RAM (restored whole when its turn comes round again) and it goes
        to the back of the line, so a newcomer's first token waits for a slice, not for whole
        answers. The longest-running slices go first. Only answers whose cache host RAM can take
        now, and whose sampler state goes along (engines that carry it: every answer; else those
        whose next token the cache alone decides, `SamplingParams.stateless`): the others keep
        their place (a changed random stream or a recompute is not worth a slice)."""
        waiting = len(self.waiting) - (self.max_running - len(self.active))
        if self.time_slice <= 0 or waiting <= 0:
            return []
        due = [
            r
            for r in self.active
            if r.status is Status.RUNNING
            and len(r.generated) - r.slice_start >= self.time_slice
            and self._takes_turns(r)
            and self.room.can_park(r.slot)  # type: ignore[arg-type]
        ]
        due.sort(key=lambda r: r.slice_start - len(r.generated))  # stable: oldest admit first among equals
        sliced = due[:waiting]
        for request in sliced:
            self.active.remove(request)
            self.room.park_answer(request, plan)
            request.slot, request.status = None, Status.WAITING
        self.counts["slices"] += len(sliced)
        return sliced

    def _takes_turns(self, request: Request) -> bool:
        """Whether `request` goes on unchanged after a park: its sampler goes along, or it has none."""
        return request.sampling.stateless or self.engine.carries_sampling

    def _place(self, request: Request, now: float, plan: Plan) -> Admit | None:
        """The room places `request` (None: no sequence this step); it goes into service."""
        admit = self.room.place(request, now, plan)
        if admit is None:
            return None
        if request.cache_key is not None and admit.kind not in ("shared", "resumed"):  # a resume is no turn
            self._count_turn(admit.kind, request.cache_key)
        request.slot = admit.slot
        request.slice_start = len(request.generated)
        if request.stats.started_at is None:
            shared = admit.kind == "shared"
            request.stats.started_at = now
            request.stats.reused_tokens = 0 if shared else admit.keep
            request.stats.shared_tokens = admit.keep if shared else 0
        self.active.append(request)
        request.settle()
        self.room.sharing.promise(request)
        return admit

    def _count_turn(self, kind: str, cache_key: str) -> None:
        if kind != "fresh":
            self.turns[kind] += 1
        elif cache_key in self._seen:
            self.turns["reprefilled"] += 1

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
        if self._last_update is not None:
            self.step_s = 0.8 * self.step_s + 0.2 * (now - self._last_update)
        self._last_update = now
        self.room.parked(plan, out, now)
        for admit in plan.admits:
            request = admit.request
            if request in out.failed:
                continue
            del admit.slot.tokens[out.kept[request] :]
            self.room.sharing.cut(admit.slot)
            if request in out.restore_failed:
                self.counts["restore_failures"] += 1
                if admit.kind == "restored":  # a shared record or a sliced answer's is not a turn
                    self.turns["restored"] -= 1
                    self.turns["reprefilled"] += 1
                log.warning("restoring a parked cache failed: request %d re-prefills", request.id)
            if admit.kind != "resumed":  # a sliced answer back in service: its prompt counted when it came
                request.stats.reused_tokens = min(request.stats.reused_tokens, len(admit.slot.tokens))
                request.stats.shared_tokens = min(request.stats.shared_tokens, len(admit.slot.tokens))
                self.room.sharing.count(request)
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
                self.room.sharing.tokens["prefilled"] += len(feed.tokens)
            request.slot.tokens.extend(feed.tokens)  # type: ignore[union-attr]
            self.room.sharing.track(request.slot)  # type: ignore[arg-type]
            token = out.tokens[request]
            if token is not None:
                self.room.sharing.settled(request)
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
        request.cache_key = None  # its cache state is unknown: never reuse it
        self._finish(request, FinishReason.ERROR, now, notify=False)

    def _finish(
        self, request: Request, reason: FinishReason, now: float, plan: Plan | None = None, notify: bool = True
    ) -> None:
        if request.status is Status.FINISHED:
            return
        self.room.sharing.settled(request)
        was_waiting = request.status is Status.WAITING
        if was_waiting:
            self.waiting.remove(request)
            self.room.forget_resume(request)  # a sliced answer that ended while it waited
        else:
            self.active.remove(request)
            slot = request.slot
            request.slot = None
            if slot is not None:
                if request.cache_key is not None and reason.keeps_cache and self.engine.prefix_cache:
                    self.room.keep_idle(slot, request.cache_key, now, plan)
                    self._saw(request.cache_key)
                else:
                    self.room.release(slot, plan)
        request.status = Status.FINISHED
        stats = request.stats
        stats.finished_at = now
        stats.finish_reason = reason
        if reason is FinishReason.CANCELLED:
            self.counts["cancelled"] += 1
        elif reason is not FinishReason.ERROR and not is_pin(request.cache_key):  # a pin is no answer
            self.counts["completed"] += 1
        if not was_waiting and reason is not FinishReason.ERROR:
            made = stats.completion_tokens
            self.answer_tokens = made if self.answer_tokens is None else 0.8 * self.answer_tokens + 0.2 * made
        if notify:
            self._emit(request, Finished(reason))

    def _saw(self, cache_key: str) -> None:
        """`cache_key` completed a turn: its next fresh prompt counts as re-prefilled."""
        self._seen[cache_key] = None
        self._seen.move_to_end(cache_key)
        while len(self._seen) > SEEN_CACHE_KEYS:
            self._seen.popitem(last=False)

    def _report_queue(self) -> None:
        """Each waiting request's place and rough wait: rounds of whole answers, or of time slices
        while the answers in service take turns, each round that many steps."""
        answer = self.answer_tokens
        if answer is None:
            answer = max((r.max_new_tokens for r in self.active), default=0)
        if self.time_slice > 0 and all(self._takes_turns(r) for r in self.active):
            answer = min(answer, self.time_slice)
        for position, request in enumerate(self.waiting, start=1):
            if request.last_position != position:
                request.last_position = position
                rounds = math.ceil(position / max(1, self.max_running))
                self._emit(request, Queued(position, rounds * answer * self.step_s))

    def snapshot(self) -> BackendStats:
        """The figures `Scheduler.stats()` starts from, as of the end of a step."""
        return BackendStats(
            running=sum(r.status is Status.RUNNING for r in self.active),
            prefilling=sum(r.status is Status.PREFILL for r in self.active),
            waiting=len(self.waiting),
            scheduler=SchedulerStats(
                max_running=self.max_running,
                **self.counts,
                turns_reused=self.turns["reused"],
                turns_restored=self.turns["restored"],
                turns_reprefilled=self.turns["reprefilled"],
                room=self.room.stats(),
            ),
        )

    def drain(self) -> tuple[list[Request], list[Slot]]:
        """Shutdown: every request still waiting or in service, and every slot to release."""
        pending = [*self.waiting, *self.active]
        self.waiting.clear()
        self.active = []
        for request in pending:  # a sliced answer's parked state (and sampler) goes now, not at exit
            self.room.forget_resume(request)
        return pending, self.room.drain()
