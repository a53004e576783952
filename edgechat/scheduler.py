"""The one thread that owns the engine: queue, admission, batching, fairness, cancellation, KV reuse.

Any number of threads `submit()` a prompt and iterate the returned `RequestHandle` for events;
one worker thread runs the loop, shaped like vLLM's scheduler step:

    plan = _schedule()      decide: finish cancelled, admit waiting, pick decode batch + prefill chunk
    out  = _execute(plan)   the only engine calls
    _update(plan, out)      turn sampled tokens into per-request events, finish requests

A request that completes (stop id or length) with a `session` key leaves its sequence idle
instead of freeing it (a cancelled, timed-out or failed one frees it at once); the
session's next request keeps the longest common token prefix of that cache and prefills only the
rest (llama.cpp server's "keep the common prefix, drop the rest"). Idle sequences are evicted
least-recently-used when a slot or the KV budget is needed; an evicted session simply re-prefills.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgechat.engines.base import Engine
from edgechat.errors import RequestError
from edgechat.types import (
    Failed,
    Finished,
    FinishReason,
    Queued,
    RequestStats,
    SamplingParams,
    Tick,
    Token,
    TokenEvent,
    TokenRate,
)

log = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = 256


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class _Request:
    id: int
    prompt: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int]
    session: str | None
    deadline: float | None
    events: queue.Queue[TokenEvent] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: FinishReason = FinishReason.CANCELLED
    stats: RequestStats = field(default_factory=RequestStats)
    status: Status = Status.WAITING
    seq: int = -1
    cached: list[int] = field(default_factory=list)  # tokens in the sequence's KV cache
    generated: list[int] = field(default_factory=list)
    last_position: int = -1


class RequestHandle:
    """The consumer's side of one request: iterate events; `cancel()` (or closing the iterator)
    frees the sequence within one scheduler step."""

    def __init__(self, request: _Request, scheduler: Scheduler) -> None:
        self._request = request
        self._scheduler = scheduler

    @property
    def stats(self) -> RequestStats:
        return self._request.stats

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        """Finish the request within one step; `reason` STOP means the consumer found a stop
        string: the answer is complete and its cache is kept for the next turn."""
        if not self._request.cancelled.is_set():
            self._request.cancel_reason = reason
            self._request.cancelled.set()
        self._scheduler._wake()

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            try:
                event = self._request.events.get(timeout=0.5)
            except queue.Empty:
                if self._scheduler.failure is not None:
                    yield Failed(f"the engine stopped: {self._scheduler.failure}")
                    return
                yield Tick()
                continue
            yield event
            if isinstance(event, (Finished, Failed)):
                return


@dataclass
class _Plan:
    finish: list[tuple[_Request, FinishReason]] = field(default_factory=list)
    decode: list[_Request] = field(default_factory=list)
    prefill: _Request | None = None
    prefill_tokens: list[int] = field(default_factory=list)


@dataclass
class _Outputs:
    decoded: dict[_Request, int] = field(default_factory=dict)
    prefill_token: int | None = None
    failed: dict[_Request, str] = field(default_factory=dict)


class Scheduler:
    """Owns `engine`; see the module docstring for the step shape."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_running: int | None = None,
        max_queue: int = 64,
        kv_budget_tokens: int | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.max_running = min(max_running or engine.max_sequences, engine.max_sequences)
        self.max_queue = max_queue
        self.kv_budget_tokens = kv_budget_tokens or engine.max_sequences * engine.max_len
        self.request_timeout_s = request_timeout_s
        self.prefill_chunk = engine.prefill_chunk
        self.failure: str | None = None
        self._cond = threading.Condition()
        self._inbox: deque[_Request] = deque()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # PREFILL or RUNNING, in admission order
        self._idle: OrderedDict[str, tuple[int, list[int]]] = OrderedDict()  # session -> (seq, cached)
        self._rr = 0  # round-robin offset for engines that batch fewer than all running
        self._ids = itertools.count(1)
        self._closing = False
        self._counts = {"completed": 0, "cancelled": 0, "errors": 0, "refused": 0}
        self._rate = TokenRate()
        self._service_s = 10.0  # moving average of a request's time in service, for queue ETAs
        self._worker = threading.Thread(target=self._run, name="edgechat-scheduler", daemon=True)
        self._worker.start()

    # ---- the submitting side (any thread) ----

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        stop_ids: frozenset[int],
        session: str | None = None,
    ) -> RequestHandle:
        if self.failure is not None:
            raise RequestError(f"the engine stopped: {self.failure}; reload the runtime")
        if not prompt:
            raise RequestError("empty prompt")
        room = self.engine.max_len - len(prompt)
        if room < 1:
            raise RequestError(f"prompt of {len(prompt)} tokens does not fit the context of {self.engine.max_len}")
        request = _Request(
            id=next(self._ids),
            prompt=list(prompt),
            sampling=sampling,
            max_new_tokens=min(sampling.max_new_tokens, room),
            stop_ids=stop_ids,
            session=session,
            deadline=None if self.request_timeout_s is None else time.monotonic() + self.request_timeout_s,
        )
        request.stats.submitted_at = time.monotonic()
        request.stats.prompt_tokens = len(request.prompt)
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down")
            if len(self._waiting) + len(self._inbox) >= self.max_queue and self._at_capacity():
                self._counts["refused"] += 1
                raise RequestError("busy: too many people are waiting; try again in a moment")
            self._inbox.append(request)
            self._cond.notify()
        return RequestHandle(request, self)

    def stats(self) -> dict[str, Any]:
        """Engine-wide figures for the page's server panel and the terminal."""
        with self._cond:
            now = time.monotonic()
            kv_used = sum(len(r.cached) for r in self._active) + sum(len(c) for _, c in self._idle.values())
            return {
                "running": sum(r.status is Status.RUNNING for r in self._active),
                "prefilling": sum(r.status is Status.PREFILL for r in self._active),
                "waiting": len(self._waiting) + len(self._inbox),
                "idle_sessions": len(self._idle),
                "sequences_in_use": len(self._active) + len(self._idle),
                "aggregate_tps": self._rate.per_second(now),
                "kv_tokens_used": kv_used,
                "kv_tokens_budget": self.kv_budget_tokens,
                "max_running": self.max_running,
                "max_queue": self.max_queue,
                "alive": self.failure is None and self._worker.is_alive(),
                **self._counts,
            }

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(timeout=30)

    def forget_session(self, session: str) -> None:
        """Drop a session's idle cache (New chat): its next request starts from scratch."""
        with self._cond:
            self._inbox.append(_Request(-1, [], SamplingParams(), 0, frozenset(), session, None))
            self._cond.notify()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _at_capacity(self) -> bool:
        return len(self._active) >= self.max_running

    # ---- the worker thread ----

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._waiting or self._active or self._closing):
                        self._cond.wait()
                    if self._closing:
                        break
                    self._take_inbox()
                    plan = self._schedule()
                outputs = self._execute(plan)  # engine work runs without the lock
                with self._cond:
                    self._update(plan, outputs)
        except Exception as err:  # noqa: BLE001 — a dead worker must be reported, not silent
            log.exception("scheduler worker died")
            self.failure = f"{type(err).__name__}: {err}"
        finally:
            self._shutdown()

    def _take_inbox(self) -> None:
        while self._inbox:
            request = self._inbox.popleft()
            if request.id == -1:  # forget_session marker
                self._evict_session(request.session)  # type: ignore[arg-type]
            else:
                self._waiting.append(request)

    def _schedule(self) -> _Plan:
        plan = _Plan()
        now = time.monotonic()
        for request in [*self._waiting, *self._active]:
            if request.cancelled.is_set():
                plan.finish.append((request, request.cancel_reason))
            elif request.deadline is not None and now > request.deadline:
                plan.finish.append((request, FinishReason.TIMEOUT))
        for request, reason in plan.finish:
            self._finish(request, reason)
        plan.finish.clear()

        while self._waiting and not self._at_capacity():
            self._admit(self._waiting.popleft(), now)
        self._report_queue()

        running = [r for r in self._active if r.status is Status.RUNNING]
        width = self.engine.max_batch
        if len(running) > width:  # round-robin so no sequence starves on narrow engines
            start = self._rr % len(running)
            running = (running[start:] + running[:start])[:width]
            self._rr += width
        plan.decode = running

        prefilling = [r for r in self._active if r.status is Status.PREFILL]
        if prefilling:
            request = prefilling[0]
            rest = request.prompt[len(request.cached) :]
            chunk = rest if self.prefill_chunk is None else rest[: self.prefill_chunk]
            plan.prefill, plan.prefill_tokens = request, chunk
        return plan

    def _admit(self, request: _Request, now: float) -> None:
        request.stats.started_at = now
        idle = self._idle.pop(request.session, None) if request.session is not None else None
        if idle is not None:
            seq, cached = idle
            common = _common_prefix(cached, request.prompt)
            keep = min(common, len(request.prompt) - 1)  # prefill at least one token for logits
        else:
            self._make_room(1)
            seq, keep = self.engine.open_sequence(), 0
            cached = []
        keep = self.engine.start(seq, request.sampling, keep)
        request.seq = seq
        request.cached = cached[:keep]
        request.stats.reused_tokens = keep
        request.status = Status.PREFILL
        self._active.append(request)
        self._make_room(0)

    def _make_room(self, slots: int) -> None:
        """Evict idle sessions, least recently used first, until `slots` sequences are free and
        the KV budget holds."""
        while self._idle:
            in_use = len(self._active) + len(self._idle)
            kv = sum(len(r.prompt) for r in self._active) + sum(len(c) for _, c in self._idle.values())
            if in_use + slots <= self.engine.max_sequences and kv <= self.kv_budget_tokens:
                return
            self._evict_session(next(iter(self._idle)))

    def _evict_session(self, session: str) -> None:
        idle = self._idle.pop(session, None)
        if idle is not None:
            self.engine.release(idle[0])

    def _report_queue(self) -> None:
        for position, request in enumerate(self._waiting, start=1):
            if request.last_position != position:
                request.last_position = position
                rounds = math.ceil(position / max(1, self.max_running))
                request.events.put(Queued(position, rounds * self._service_s))

    def _execute(self, plan: _Plan) -> _Outputs:
        out = _Outputs()
        if plan.decode:
            try:
                tokens = self.engine.decode([(r.seq, r.generated[-1]) for r in plan.decode])
                out.decoded = dict(zip(plan.decode, tokens, strict=True))
            except Exception as err:  # noqa: BLE001 — isolate the failing sequence, serve the rest
                if len(plan.decode) == 1:
                    out.failed[plan.decode[0]] = _describe(err)
                else:
                    log.warning("batched decode failed (%s); retrying one by one", _describe(err))
                    for request in plan.decode:
                        try:
                            out.decoded[request] = self.engine.decode([(request.seq, request.generated[-1])])[0]
                        except Exception as one:  # noqa: BLE001
                            out.failed[request] = _describe(one)
        if plan.prefill is not None:
            try:
                out.prefill_token = self.engine.prefill(plan.prefill.seq, plan.prefill_tokens)
            except Exception as err:  # noqa: BLE001
                out.failed[plan.prefill] = _describe(err)
        return out

    def _update(self, plan: _Plan, out: _Outputs) -> None:
        now = time.monotonic()
        produced = 0
        for request, message in out.failed.items():
            log.error("request %d failed: %s", request.id, message)
            self._fail(request, message)
        for request, token in out.decoded.items():
            request.cached.append(request.generated[-1])
            self._accept(request, token, now)
            produced += 1
        request = plan.prefill
        if request is not None and request not in out.failed:
            request.cached.extend(plan.prefill_tokens)
            if len(request.cached) == len(request.prompt):
                request.status = Status.RUNNING
                request.stats.first_token_at = now
                self._accept(request, out.prefill_token, now)  # type: ignore[arg-type]
                produced += 1
        if produced:
            self._rate.add(produced, now)

    def _accept(self, request: _Request, token: int, now: float) -> None:
        if request.status is Status.FINISHED:
            return
        if token in request.stop_ids:
            self._finish(request, FinishReason.STOP)
            return
        request.generated.append(token)
        request.stats.completion_tokens += 1
        request.events.put(Token(token))
        if len(request.generated) >= request.max_new_tokens:
            self._finish(request, FinishReason.LENGTH)

    def _fail(self, request: _Request, message: str) -> None:
        self._counts["errors"] += 1
        request.events.put(Failed(message))
        request.session = None  # its cache state is unknown: never reuse it
        self._finish(request, FinishReason.ERROR, notify=False)

    def _finish(self, request: _Request, reason: FinishReason, notify: bool = True) -> None:
        if request.status is Status.FINISHED:
            return
        was_waiting = request.status is Status.WAITING
        if was_waiting:
            self._waiting.remove(request)
        else:
            self._active.remove(request)
            if request.session is not None and reason.keeps_cache:
                self._idle[request.session] = (request.seq, request.cached)
                self._idle.move_to_end(request.session)
                self._make_room(0)
            else:
                self.engine.release(request.seq)
        request.status = Status.FINISHED
        stats = request.stats
        stats.finished_at = time.monotonic()
        stats.finish_reason = reason
        if reason is FinishReason.CANCELLED:
            self._counts["cancelled"] += 1
        elif reason is not FinishReason.ERROR:
            self._counts["completed"] += 1
        if not was_waiting and stats.started_at is not None:
            self._service_s = 0.8 * self._service_s + 0.2 * (stats.finished_at - stats.started_at)
        if notify:
            request.events.put(Finished(reason))

    def _shutdown(self) -> None:
        with self._cond:
            self._take_inbox()
            pending = [*self._waiting, *self._active]
        message = self.failure or "the server is shutting down"
        for request in pending:
            request.events.put(Failed(message))
            request.status = Status.FINISHED
        for seq, _ in self._idle.values():
            self.engine.release(seq)
        self._idle.clear()


def _describe(err: Exception) -> str:
    return f"the engine failed on this request ({type(err).__name__}: {err}); try again"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
