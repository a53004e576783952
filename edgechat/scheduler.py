"""The one thread that owns the engine: queue, admission, batching, fairness, cancellation, KV reuse,
parking idle caches in host RAM.

Any number of threads `submit()` a prompt and iterate the returned `RequestHandle` for events;
one worker thread runs the loop, shaped like vLLM's scheduler step:

    plan = policy.decide()   finish cancelled/expired, admit waiting, park or evict idle caches
                             for room, pick the feeds
    out  = _execute(plan)    every engine call, in plan order
    policy.update(plan, out) sampled tokens become per-request events, requests finish

`edgechat.policy` holds the decisions and the state; this module holds the threads and the engine.
The lock guards only the hand-off (inbox, forget list, close); `stats()` reads the snapshot the
worker publishes after each step.

A request with a `session` key leaves its sequence idle when it ends (a failed one frees it: its
cache state is unknown). The session's next request keeps the
longest common token prefix of that cache and prefills only the rest (llama.cpp server's "keep
the common prefix, drop the rest"). When a sequence is needed, the least recently used idle cache
is parked in host RAM (edgechat.kvcache) instead of dropped, and restored on the session's next
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
from typing import Any

from edgechat.engines.base import Engine
from edgechat.errors import RequestError
from edgechat.kvcache import HostCache, default_host_cache_bytes, meminfo_bytes
from edgechat.policy import Policy
from edgechat.prefixes import pin_key
from edgechat.sequences import EngineFacts, Feed, Outputs, Plan, Request, Slot, Status
from edgechat.types import Failed, Finished, FinishReason, RequestStats, SamplingParams, Tick, TokenEvent, TokenRate

log = logging.getLogger(__name__)

TICK_S = 0.5  # a waiting reader gets a Tick this often without news
DEFAULT_SESSION_TTL_S = 3600.0


class RequestHandle:
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
        max_queue: int = 64,
        request_timeout_s: float | None = None,
        host_cache_bytes: int | None = None,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        available_ram: Callable[[], int | None] = lambda: meminfo_bytes("MemAvailable"),
        share_prefixes: bool = True,
        start: bool = True,
    ) -> None:
        """`clock` and `available_ram` are injectable for tests; `share_prefixes=False` turns off prompt prefixes
        shared across sessions (benches compare); `start=False` leaves the stepping to the caller."""
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
        host = None
        if engine.prefix_cache:
            size = default_host_cache_bytes() if host_cache_bytes is None else host_cache_bytes
            host = HostCache(size, session_ttl_s, available_ram=available_ram)
        self._policy = Policy(
            EngineFacts.of(engine),
            max_running=self.max_running,
            host=host,
            session_ttl_s=session_ttl_s,
            share_prefixes=share_prefixes,
        )
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
        session: str | None = None,
    ) -> RequestHandle:
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
            session=session,
            deadline=None if self.request_timeout_s is None else now + self.request_timeout_s,
        )
        request.stats.submitted_at = now
        request.stats.prompt_tokens = len(request.prompt)
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down")
            snap = self._snapshot
            full = snap["running"] + snap["prefilling"] >= self.max_running
            if full and snap["waiting"] + len(self._inbox) >= self.max_queue:
                self._refused += 1
                raise RequestError("busy: too many people are waiting; try again in a moment")
            self._inbox.append(request)
            self._cond.notify()
        return RequestHandle(request, self)

    def pin(self, prompt: Sequence[int]) -> RequestHandle | None:
        """Prefill `prompt` (the room's system prompt and handout, up to where conversations part)
        once and keep its cache as a pinned prefix every new conversation may copy: resident while
        a sequence is free, then in host RAM, never dropped for room or age. None on engines
        without a prefix cache, or with prefix sharing off."""
        if not self._policy.sharing.enabled:
            return None
        greedy = SamplingParams(temperature=0.0, max_new_tokens=1)
        return self.submit(prompt, greedy, frozenset(), session=pin_key(next(self._pins)))

    def forget_session(self, session: str) -> None:
        """Drop a session's cache, in KV or parked (New chat, a closed tab): its next request
        starts from scratch."""
        with self._cond:
            self._forget.append(session)
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        """Engine-wide figures for the page's server panel, `stats` in the terminal and /metrics."""
        out = dict(self._snapshot)
        out["waiting"] += len(self._inbox)
        with self._rate_lock:
            out["aggregate_tps"] = self._rate.per_second(self._clock())
        out["max_queue"] = self.max_queue
        out["refused"] = self._refused
        out["alive"] = self.failure is None and (self._worker is None or self._worker.is_alive())
        out.update(self._step_time)
        out.update(getattr(self.engine, "timings", {}))
        return out

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
                    while not (self._inbox or self._forget or self._policy.busy() or self._closing):
                        expiry = self._policy.next_expiry()
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
        plan = self._policy.decide(inbox, forget, self._clock())
        if not plan.empty():
            outputs = self._execute(plan)
            now = self._clock()
            produced = self._policy.update(plan, outputs, now)
            if produced:
                with self._rate_lock:
                    self._rate.add(produced, now)
        self._snapshot = self._publish()
        self._policy.deliver()
        if not plan.empty():
            timing = self._step_time
            timing["steps"] += 1
            timing["step_s"] += time.perf_counter() - began
            timing["step_cpu_s"] += time.thread_time() - began_cpu
        return not plan.empty()

    def _publish(self) -> dict[str, Any]:
        """The policy's figures, and the per-TPU load of an engine over several chips."""
        snapshot = self._policy.snapshot()
        chip_load = getattr(self.engine, "chip_load", None)
        if chip_load is not None:
            snapshot["chips"] = chip_load()
            live = self.engine.live_sequences  # type: ignore[attr-defined]
            if live < self._policy.engine.max_sequences:  # a TPU went out: fewer answers at once
                self._policy.engine = replace(self._policy.engine, max_sequences=live)
                self._policy.max_running = min(self._policy.max_running, live)
        return snapshot

    # ---- execute: every engine call ----

    def _execute(self, plan: Plan) -> Outputs:
        out = Outputs()
        engine = self.engine
        for park in plan.parks:
            try:
                out.saved[park] = engine.save(park.slot.seq)
            except Exception as err:  # noqa: BLE001 — a cache that cannot be saved is dropped
                log.warning("could not park a cache (%s); it will be re-prefilled", _describe(err))
            engine.release(park.slot.seq)
        for slot in plan.releases:
            engine.release(slot.seq)
        planned: dict[Request, int] = {}
        saved = {park.slot: data for park, data in out.saved.items()}  # a source evicted this step
        for admit in plan.admits:
            request, slot = admit.request, admit.slot
            planned[request] = admit.keep
            try:
                if slot.seq < 0:
                    slot.seq = engine.open_sequence()
                keep = admit.keep
                restore = admit.restore
                if restore is not None and not engine.restore(slot.seq, restore.data, len(restore.tokens)):
                    out.restore_failed.add(request)
                    keep = 0
                if admit.share is not None and not self._copy(slot.seq, admit.share, saved):
                    keep = 0  # the newcomer prefills its whole prompt
                out.kept[request] = engine.start(slot.seq, request.sampling, keep)
            except Exception as err:  # noqa: BLE001 — this request fails, the step goes on
                out.failed[request] = _describe(err)
        # A request the engine kept fewer tokens for than planned is fed from there next step.
        feeds = [
            f
            for f in plan.feeds
            if f.request not in out.failed and out.kept.get(f.request, -1) == planned.get(f.request, -1)
        ]
        if feeds:
            if engine.batch_prefill:
                self._run_batch(feeds, out)
            else:
                self._run_in_turns(feeds, out)
        return out

    def _copy(self, seq: int, source: Slot, saved: dict[Slot, bytearray]) -> bool:
        """A prefix shared across sessions: the source sequence's cache, or its copy saved when it
        was parked this step (its sequence may be this very one now)."""
        if source in saved:
            return self.engine.restore(seq, saved[source], len(source.tokens))
        return source.seq >= 0 and self.engine.copy(seq, source.seq)

    def _run_batch(self, feeds: list[Feed], out: Outputs) -> None:
        try:
            tokens = self.engine.step([(f.request.slot.seq, f.tokens, f.sample) for f in feeds])  # type: ignore[union-attr]
            for feed, token in zip(feeds, tokens, strict=True):
                if isinstance(token, Exception):  # that sequence alone failed (one TPU of several)
                    out.failed[feed.request] = _describe(token)
                else:
                    out.tokens[feed.request] = token
            for feed in feeds:
                if feed.request in out.failed:
                    continue
                if feed.sample and feed.request.sampling.logprobs is not None:
                    found = self.engine.token_logprobs(feed.request.slot.seq)  # type: ignore[union-attr]
                    if found is not None:
                        out.logprobs[feed.request] = found
        except Exception as err:  # noqa: BLE001 — isolate the failing sequence, serve the rest
            if len(feeds) == 1:
                out.failed[feeds[0].request] = _describe(err)
                return
            log.warning("batched step failed (%s); retrying one by one", _describe(err))
            for feed in feeds:
                self._run_batch([feed], out)

    def _run_in_turns(self, feeds: list[Feed], out: Outputs) -> None:
        """Engines without batch_prefill: decode the running ones together, then each prompt."""
        decodes = [f for f in feeds if f.request.status is Status.RUNNING]
        if decodes:
            try:
                tokens = self.engine.decode([(f.request.slot.seq, f.tokens[0]) for f in decodes])  # type: ignore[union-attr]
                for feed, token in zip(decodes, tokens, strict=True):
                    if isinstance(token, Exception):  # that sequence alone failed (one TPU of several)
                        out.failed[feed.request] = _describe(token)
                    else:
                        out.tokens[feed.request] = token
            except Exception as err:  # noqa: BLE001
                if len(decodes) == 1:
                    out.failed[decodes[0].request] = _describe(err)
                else:
                    log.warning("batched decode failed (%s); retrying one by one", _describe(err))
                    for feed in decodes:
                        self._run_in_turns([feed], out)
        for feed in feeds:
            if feed.request.status is Status.PREFILL:
                try:
                    token = self.engine.prefill(feed.request.slot.seq, feed.tokens)  # type: ignore[union-attr]
                    out.tokens[feed.request] = token if feed.sample else None
                except Exception as err:  # noqa: BLE001
                    out.failed[feed.request] = _describe(err)

    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            inbox = list(self._inbox)
            self._inbox.clear()
        self._policy.deliver()
        pending, slots = self._policy.drain()
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
        self._snapshot = self._policy.snapshot()


def _describe(err: Exception) -> str:
    return f"the engine failed on this request ({type(err).__name__}: {err}); try again"
