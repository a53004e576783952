"""The one thread that owns the engine: queue, admission, batching, fairness, cancellation, KV reuse,
parking idle caches in host RAM.

Any number of threads `submit()` a prompt and iterate the returned `RequestEvents`;
one worker thread runs the loop, shaped like vLLM's scheduler step:

    plan = planner.decide()   finish cancelled/expired, admit waiting where the room places them
                              (parking or evicting idle caches), pick the feeds
    out  = execute(plan)      every engine call, in plan order (edgechat.execute)
    planner.update(plan, out) sampled tokens become per-request events, requests finish

`edgechat.planner` holds the decisions, `edgechat.room` the caches; this module holds the threads
and the engine (vLLM's engine-core loop: its Scheduler role is the planner and the room).
The lock guards only the hand-off (inbox, forget list, close); `stats()` reads the snapshot the
worker publishes after each step.

A request with a `cache_key` leaves its sequence idle when it ends (a failed one frees it: its
cache state is unknown). The cache key's next request keeps the
longest common token prefix of that cache and prefills only the rest (llama.cpp server's "keep
the common prefix, drop the rest"). When a sequence is needed, the least recently used idle cache
is parked in host RAM (edgechat.kvcache) instead of dropped, and restored on the cache key's next
turn; a restore the engine rejects falls back to a re-prefill.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from edgechat.config import Settings
from edgechat.engines.base import Engine
from edgechat.errors import RequestError
from edgechat.execute import execute
from edgechat.kvcache import meminfo_bytes
from edgechat.planner import Planner
from edgechat.prefixes import pin_key
from edgechat.room import Room
from edgechat.sequences import EngineFacts, Request, Status
from edgechat.stats import BackendStats
from edgechat.types import Failed, Finished, FinishReason, RequestStats, SamplingParams, Tick, TokenEvent, TokenRate

log = logging.getLogger(__name__)

TICK_S = 0.5  # a waiting reader gets a Tick this often without news


class RequestEvents:
    """The consumer's side of one request: iterate events; `cancel()` (or closing the iterator)
    frees the sequence within one scheduler step."""

    def __init__(self, request: Request, scheduler: Scheduler) -> None:
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

    def poll(self) -> list[TokenEvent]:
        """The events that arrived so far, without waiting (for pollers and tests)."""
        out: list[TokenEvent] = []
        while True:
            try:
                out.append(self._request.events.get_nowait())
            except queue.Empty:
                return out

    def __iter__(self) -> Iterator[TokenEvent]:
        events = self._request.events
        while True:
            try:
                event = events.get(timeout=TICK_S)
            except queue.Empty:
                if self._scheduler.failure is not None:
                    yield Failed(f"the engine stopped: {self._scheduler.failure}")
                    return
                yield Tick()
                continue
            yield event
            if isinstance(event, (Finished, Failed)):
                return


class Scheduler:
    """Owns `engine`; see the module docstring for the step shape."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_running: int | None = None,
        max_queue: int = Settings.max_queue,
        request_timeout_s: float | None = None,
        host_cache_bytes: int | None = None,
        cache_ttl_s: float = Settings.session_ttl,
        clock: Callable[[], float] = time.monotonic,
        available_ram: Callable[[], int | None] = lambda: meminfo_bytes("MemAvailable"),
        share_prefixes: bool = True,
        time_slice: int = 0,
        start: bool = True,
    ) -> None:
        """`clock` and `available_ram` are injectable for tests; `share_prefixes=False` turns off prompt prefixes
        shared across conversations (benches compare); `time_slice` > 0 parks an answer after that many
        tokens while people wait and every place is busy (--time-slice, which the runtime passes;
        0 here, so a scheduler built by hand serves first come, first served unless it asks);
        `start=False` leaves the stepping to the caller."""
        self.engine = engine
        self.max_running = min(max_running or engine.max_sequences, engine.max_sequences)
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.failure: str | None = None
        self._clock = clock
        self._cond = threading.Condition()
        self._inbox: deque[Request] = deque()
        self._forget: list[str] = []
        self._closing = False
        self._refused = 0
        facts = EngineFacts.of(engine)
        room = Room(
            facts,
            host_cache_bytes=host_cache_bytes,
            cache_ttl_s=cache_ttl_s,
            available_ram=available_ram,
            share_prefixes=share_prefixes,
        )
        self._planner = Planner(facts, room, max_running=self.max_running, time_slice=time_slice)
        self._pins = itertools.count(1)
        self._ids = itertools.count(1)
        self._rate = TokenRate()
        self._rate_lock = threading.Lock()
        self._snapshot = self._publish()
        # Wall and CPU seconds of the worker's steps that ran something (/metrics): what the
        # engine's own timings (decode, cache moves, sampling) leave is Python around the step.
        self._step_time = {"steps": 0, "step_s": 0.0, "step_cpu_s": 0.0}
        self._worker: threading.Thread | None = None
        if start:
            self._worker = threading.Thread(target=self._run, name="edgechat-scheduler", daemon=True)
            self._worker.start()

    @property
    def max_len(self) -> int:
        """Tokens one request can hold, prompt and answer together."""
        return self.engine.max_len

    # ---- the submitting side (any thread) ----

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        stop_ids: frozenset[int],
        cache_key: str | None = None,
    ) -> RequestEvents:
        if self.failure is not None:
            raise RequestError(f"the engine stopped: {self.failure}; reload the runtime")
        if not prompt:
            raise RequestError("empty prompt")
        room = self.engine.max_len - len(prompt)
        if room < 1:
            raise RequestError(f"prompt of {len(prompt)} tokens does not fit the context of {self.engine.max_len}")
        now = self._clock()
        request = Request(
            id=next(self._ids),
            prompt=list(prompt),
            sampling=sampling,
            max_new_tokens=min(sampling.max_new_tokens, room),
            stop_ids=stop_ids,
            cache_key=cache_key,
            deadline=None if self.request_timeout_s is None else now + self.request_timeout_s,
        )
        request.stats.submitted_at = now
        request.stats.prompt_tokens = len(request.prompt)
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down")
            snap = self._snapshot
            full = snap.running + snap.prefilling >= self.max_running
            if full and snap.waiting + len(self._inbox) >= self.max_queue:
                self._refused += 1
                raise RequestError("busy: too many people are waiting; try again in a moment")
            self._inbox.append(request)
            self._cond.notify()
        return RequestEvents(request, self)

    def pin(self, prompt: Sequence[int]) -> RequestEvents | None:
        """Prefill `prompt` (the room's system prompt and handout, up to where conversations part)
        once and keep its cache as a pinned prefix every new conversation may copy: resident while
        a sequence is free, then in host RAM, never dropped for room or age. None on engines
        without a prefix cache, or with prefix sharing off."""
        if not self._planner.room.sharing.enabled:
            return None
        greedy = SamplingParams(temperature=0.0, max_new_tokens=1)
        return self.submit(prompt, greedy, frozenset(), cache_key=pin_key(next(self._pins)))

    def forget_cache(self, cache_key: str) -> None:
        """Drop a cache key's cache, in KV or parked (New chat, a closed tab): its next request
        starts from scratch."""
        with self._cond:
            self._forget.append(cache_key)
            self._cond.notify()

    def stats(self) -> BackendStats:
        """Engine-wide figures for the page's server panel, `stats` in the terminal and /metrics."""
        snap = self._snapshot
        with self._rate_lock:
            tps = self._rate.per_second(self._clock())
        timing = self._step_time
        scheduler = replace(
            snap.scheduler,  # type: ignore[type-var]
            max_queue=self.max_queue,
            refused=self._refused,
            steps=timing["steps"],
            step_s=timing["step_s"],
            step_cpu_s=timing["step_cpu_s"],
            engine=self.engine.timings(),
        )
        alive = self.failure is None and (self._worker is None or self._worker.is_alive())
        return replace(
            snap, alive=alive, waiting=snap.waiting + len(self._inbox), aggregate_tps=tps, scheduler=scheduler
        )

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._worker is not None:
            self._worker.join(timeout=30)
        else:
            self._shutdown()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- the worker thread ----

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._forget or self._planner.busy() or self._closing):
                        expiry = self._planner.room.next_expiry()
                        wait = None if expiry is None else max(0.05, expiry - self._clock())
                        if not self._cond.wait(timeout=wait):
                            break  # an idle or parked cache is due to expire
                    if self._closing:
                        break
                self.step()
        except Exception as err:  # noqa: BLE001 — a dead worker must be reported, not silent
            log.exception("scheduler worker died")
            self.failure = f"{type(err).__name__}: {err}"
        finally:
            self._shutdown()

    def step(self) -> bool:
        """One decide / execute / update round; False when there was nothing to do. The worker
        calls it in a loop; a scheduler built with `start=False` is stepped by hand (tests)."""
        with self._cond:
            inbox, self._inbox = self._inbox, deque()
            forget, self._forget = self._forget, []
        began, began_cpu = time.perf_counter(), time.thread_time()
        plan = self._planner.decide(inbox, forget, self._clock())
        if not plan.empty():
            outputs = execute(self.engine, plan)
            now = self._clock()
            produced = self._planner.update(plan, outputs, now)
            if produced:
                with self._rate_lock:
                    self._rate.add(produced, now)
        self._snapshot = self._publish()
        self._planner.deliver()
        if not plan.empty():
            timing = self._step_time
            timing["steps"] += 1
            timing["step_s"] += time.perf_counter() - began
            timing["step_cpu_s"] += time.thread_time() - began_cpu
        return not plan.empty()

    def _publish(self) -> BackendStats:
        """The planner's figures, and the per-TPU load of an engine over several chips."""
        snapshot = self._planner.snapshot()
        chips = self.engine.chip_load()
        if chips:
            snapshot = replace(snapshot, scheduler=replace(snapshot.scheduler, chips=chips))  # type: ignore[type-var]
            live = sum(c.slots for c in chips if c.alive)
            if live < self._planner.engine.max_sequences:  # a TPU went out: fewer answers at once
                self._planner.lose_sequences(live)
        return snapshot

    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            inbox = list(self._inbox)
            self._inbox.clear()
        self._planner.deliver()
        pending, slots = self._planner.drain()
        message = self.failure or "the server is shutting down"
        for request in [*inbox, *pending]:
            request.events.put(Failed(message))
            request.status = Status.FINISHED
        for slot in slots:
            if slot.seq >= 0:
                try:
                    self.engine.release(slot.seq)
                except Exception:  # noqa: BLE001 — a dead engine cannot free; the process goes on
                    log.exception("releasing a sequence at shutdown failed")
        self._snapshot = self._planner.snapshot()
