"""Scheduler policy on a small engine of its own: FIFO admission, LRU eviction, chunked prefill,
timeouts, stats. Behaviour only; speed lives in bench/serve.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgechat.engines.llamacpp import LlamaCppEngine
from edgechat.runtime import Runtime
from edgechat.scheduler import Scheduler
from edgechat.types import Finished, FinishReason, Message, Token
from tests.conftest import GREEDY

NO_STOP: frozenset[int] = frozenset()


@pytest.fixture
def small(runtime: Runtime) -> Iterator[Scheduler]:
    """Two sequences, one generating at a time, queue of three."""
    engine = LlamaCppEngine(Path(runtime.backend.scheduler.engine.model_path), context_length=1024, max_sequences=2)
    sched = Scheduler(engine, max_running=1, max_queue=3)
    yield sched
    sched.close()
    engine.close()


def ids(runtime: Runtime, question: str, history: list[Message] | None = None) -> list[int]:
    return runtime.tokenizer.render([*(history or []), Message(role="user", content=question)])


def tokens(handle) -> list[int]:  # noqa: ANN001
    return [e.id for e in handle if isinstance(e, Token)]


def test_waiting_requests_start_in_arrival_order(runtime: Runtime, small: Scheduler) -> None:
    started: list[int] = []
    lock = threading.Lock()
    handles = [
        small.submit(ids(runtime, f"Count to {i}."), replace(GREEDY, max_new_tokens=6), NO_STOP) for i in range(4)
    ]

    def consume(i: int) -> None:
        for event in handles[i]:
            if isinstance(event, Token):
                with lock:
                    if i not in started:
                        started.append(i)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert started == [0, 1, 2, 3]
    assert [h.stats.queue_wait_s for h in handles] == sorted(h.stats.queue_wait_s for h in handles)


def test_evicted_session_recomputes_and_answers_the_same(runtime: Runtime, small: Scheduler) -> None:
    stop = runtime.tokenizer.stop_ids
    first = ids(runtime, "What is 2+2?")
    answer = tokens(small.submit(first, GREEDY, stop, session="a"))
    history = [
        Message(role="user", content="What is 2+2?"),
        Message(role="assistant", content=runtime.tokenizer.decode(answer)),
    ]
    follow_up = ids(runtime, "And 3+3?", history)
    kept = small.submit(follow_up, GREEDY, stop, session="a")
    expected = tokens(kept)
    assert kept.stats.reused_tokens > 0
    # Two other sessions need both sequences: session "a" (least recently used) is evicted.
    tokens(small.submit(ids(runtime, "Hi"), replace(GREEDY, max_new_tokens=3), stop, session="b"))
    tokens(small.submit(ids(runtime, "Hello"), replace(GREEDY, max_new_tokens=3), stop, session="c"))
    assert small.stats()["idle_sessions"] == 2
    again = small.submit(follow_up, GREEDY, stop, session="a")
    assert tokens(again) == expected and again.stats.reused_tokens == 0


def test_kv_budget_evicts_idle_sessions(runtime: Runtime) -> None:
    engine = LlamaCppEngine(Path(runtime.backend.scheduler.engine.model_path), context_length=512, max_sequences=3)
    sched = Scheduler(engine, kv_budget_tokens=100)
    try:
        for name in ("a", "b"):
            tokens(
                sched.submit(ids(runtime, "What is 2+2?"), replace(GREEDY, max_new_tokens=20), NO_STOP, session=name)
            )
        stats = sched.stats()
        assert stats["kv_tokens_used"] <= 100 and stats["idle_sessions"] == 1
    finally:
        sched.close()
        engine.close()


def test_running_session_keeps_streaming_while_a_long_prompt_prefills(runtime: Runtime) -> None:
    engine = LlamaCppEngine(
        Path(runtime.backend.scheduler.engine.model_path), context_length=1024, max_sequences=2, prefill_chunk=32
    )
    sched = Scheduler(engine)
    try:
        runner = sched.submit(ids(runtime, "Tell me a story."), replace(GREEDY, max_new_tokens=600), NO_STOP)
        arrivals: list[float] = []
        reader = threading.Thread(
            target=lambda: arrivals.extend(time.monotonic() for e in runner if isinstance(e, Token))
        )
        reader.start()
        while not arrivals:
            time.sleep(0.01)
        long_prompt = ids(runtime, "Summarize: " + "the quick brown fox jumps over the lazy dog " * 60)
        assert len(long_prompt) > 8 * 32
        submitted = time.monotonic()
        newcomer = sched.submit(long_prompt, replace(GREEDY, max_new_tokens=1), NO_STOP)
        assert any(isinstance(e, Token) for e in newcomer)
        answered = time.monotonic()
        runner.cancel()
        reader.join(30)
        # One runner token per step while the prompt went in, 32 tokens a step.
        assert sum(submitted <= t <= answered for t in arrivals) >= 8
    finally:
        sched.close()
        engine.close()


def test_request_timeout_stops_and_frees(runtime: Runtime) -> None:
    engine = LlamaCppEngine(Path(runtime.backend.scheduler.engine.model_path), context_length=1024, max_sequences=1)
    sched = Scheduler(engine, request_timeout_s=0.5)
    try:
        handle = sched.submit(ids(runtime, "Tell me a story."), replace(GREEDY, max_new_tokens=1000), NO_STOP)
        events = list(handle)
        assert events[-1] == Finished(FinishReason.TIMEOUT)
        assert 0 < handle.stats.completion_tokens < 1000
        assert sched.stats()["sequences_in_use"] == 0
    finally:
        sched.close()
        engine.close()


def test_engine_stats_shape(runtime: Runtime) -> None:
    stats = runtime.backend.stats()
    for key in ("running", "waiting", "aggregate_tps", "kv_tokens_used", "kv_tokens_budget", "completed", "alive"):
        assert key in stats
    assert stats["alive"] is True
