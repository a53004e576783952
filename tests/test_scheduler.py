"""One engine, many threads: batching, equality with solo runs, cancellation, KV reuse, queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgechat.errors import RequestError
from edgechat.runtime import Runtime
from edgechat.scheduler import Scheduler
from edgechat.types import FinishReason, Message, Queued, Tick, Token, TokenEvent
from tests.conftest import GREEDY

QUESTIONS = ["What is 2+2?", "What color is the sky on a clear day?", "Name a fruit that is yellow."]


def prompt(runtime: Runtime, question: str, history: list[Message] | None = None) -> list[int]:
    return runtime.tokenizer.render([*(history or []), Message(role="user", content=question)])


def run(scheduler: Scheduler, ids: list[int], stop: frozenset[int], session: str | None = None) -> list[int]:
    return [e.id for e in scheduler.submit(ids, GREEDY, stop, session=session) if isinstance(e, Token)]


def news(handle) -> Iterator[TokenEvent]:  # noqa: ANN001
    """A handle's events without the idle ticks."""
    return (e for e in handle if not isinstance(e, Tick))


def wait_for(predicate, timeout: float = 5.0) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_concurrent_requests_equal_solo_runs(runtime: Runtime) -> None:
    sched, stop = runtime.backend.scheduler, runtime.tokenizer.stop_ids
    prompts = [prompt(runtime, q) for q in QUESTIONS]
    solo = [run(sched, p, stop) for p in prompts]
    results: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, run(sched, prompts[i], stop))) for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(3)] == solo
    texts = [runtime.tokenizer.decode(s) for s in solo]
    assert "4" in texts[0] and "blue" in texts[1].lower()


def test_cancel_frees_the_sequence_within_a_step(runtime: Runtime) -> None:
    sched = runtime.backend.scheduler
    before = sched.stats()["sequences_in_use"]
    handle = sched.submit(
        prompt(runtime, "Tell me a very long story."), replace(GREEDY, max_new_tokens=400), frozenset()
    )
    events = news(handle)
    assert isinstance(next(events), Token)
    assert sched.stats()["sequences_in_use"] == before + 1
    handle.cancel()
    assert wait_for(lambda: sched.stats()["sequences_in_use"] == before)
    assert handle.stats.finish_reason is FinishReason.CANCELLED and handle.stats.completion_tokens < 400


def test_closing_the_stream_cancels(runtime: Runtime) -> None:
    from baichuan2 import Baichuan2

    client = Baichuan2(runtime.handle, runtime.backend, runtime.tokenizer, sampling=replace(GREEDY, max_new_tokens=400))
    stream = client.chat_stream("Tell me a very long story.", [])
    next(stream)
    stream.close()  # the browser tab went away / Stop
    stats = runtime.backend.stats()  # chat_stream's close waits for the request to end
    assert stats["running"] == 0 and stats["prefilling"] == 0
    assert client.last_stats.finish_reason is FinishReason.CANCELLED and client.last_stats.completion_tokens < 400
    client.engine.forget_session(client.session)  # its cache was kept for a Continue; this test is done with it


def test_next_turn_reuses_the_cached_prefix_and_matches_reprefill(runtime: Runtime) -> None:
    sched, stop, chat = runtime.backend.scheduler, runtime.tokenizer.stop_ids, runtime.tokenizer
    first = prompt(runtime, "What is 2+2?")
    answer = run(sched, first, stop, session="reuse-test")
    history = [Message(role="user", content="What is 2+2?"), Message(role="assistant", content=chat.decode(answer))]
    second = prompt(runtime, "And 3+3?", history)
    handle = sched.submit(second, GREEDY, stop, session="reuse-test")
    reused_tokens = [e.id for e in handle if isinstance(e, Token)]
    assert handle.stats.reused_tokens >= len(first)
    fresh = run(sched, second, stop)  # no session: full prefill
    assert reused_tokens == fresh
    sched.forget_session("reuse-test")  # New chat: the next request starts from scratch
    handle = sched.submit(second, GREEDY, stop, session="reuse-test")
    assert [e.id for e in handle if isinstance(e, Token)] == fresh and handle.stats.reused_tokens == 0


def test_queue_cap_refuses_with_a_clear_message(runtime: Runtime) -> None:
    small = _SmallScheduler(runtime)
    try:
        stop = runtime.tokenizer.stop_ids
        long = replace(GREEDY, max_new_tokens=200)
        ids = prompt(runtime, "Tell me a long story.")
        first = small.submit(ids, long, stop)
        second = small.submit(ids, long, stop)  # waits: max_running=1
        events = news(second)
        queued = next(events)
        assert isinstance(queued, Queued) and queued.position == 1 and queued.eta_s > 0
        with pytest.raises(RequestError, match="busy"):
            small.submit(ids, long, stop)
        first.cancel()
        assert any(isinstance(e, Token) for e in events)  # the waiting one runs once a slot frees
        second.cancel()
    finally:
        small.close()


class _SmallScheduler(Scheduler):
    """A scheduler with room for one running request and one waiting one, over its own engine."""

    def __init__(self, runtime: Runtime) -> None:
        from edgechat.engines.llamacpp import LlamaCppEngine

        self._own = LlamaCppEngine(
            Path(runtime.backend.scheduler.engine.model_path), context_length=512, max_sequences=1
        )
        super().__init__(self._own, max_running=1, max_queue=1)

    def close(self) -> None:
        super().close()
        self._own.close()
