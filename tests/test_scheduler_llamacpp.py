"""The scheduler on real llama.cpp: batched answers equal solo ones, cancel and closed streams free
or keep the cache as they should, a conversation's next turn reuses its cache, a parked and restored
cache answers exactly as if it had stayed, a restore llama.cpp rejects falls back to re-prefill,
the queue cap. Planner details are tested on the FakeEngine in test_scheduler_fake_engine.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from edgechat.engines.llamacpp import LlamaCppEngine
from edgechat.errors import RequestError
from edgechat.runtime import Runtime
from edgechat.scheduler import RequestEvents, Scheduler
from edgechat.types import Finished, FinishReason, Message, Queued, Tick, Token, TokenEvent
from tests.conftest import GREEDY

QUESTIONS = ["What is 2+2?", "What color is the sky on a clear day?", "Name a fruit that is yellow."]
WAIT_S = 60.0  # the longest any wait below may take


def prompt(runtime: Runtime, question: str, history: list[Message] | None = None) -> list[int]:
    return runtime.tokenizer.render([*(history or []), Message(role="user", content=question)])


def run(scheduler: Scheduler, ids: list[int], stop: frozenset[int], cache_key: str | None = None) -> list[int]:
    return tokens(scheduler.submit(ids, GREEDY, stop, cache_key=cache_key))


def tokens(handle: RequestEvents) -> list[int]:
    return [e.id for e in news(handle) if isinstance(e, Token)]


def news(handle: RequestEvents) -> Iterator[TokenEvent]:
    """A handle's events without the idle ticks, for at most WAIT_S."""
    end = time.monotonic() + WAIT_S
    for event in handle:
        if time.monotonic() > end:
            raise AssertionError("no end of the request in time")
        if not isinstance(event, Tick):
            yield event


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
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
        t.join(WAIT_S)
    assert [results[i] for i in range(3)] == solo
    texts = [runtime.tokenizer.decode(s) for s in solo]
    assert "4" in texts[0] and "blue" in texts[1].lower()


def test_cancel_frees_the_sequence_within_a_step(runtime: Runtime) -> None:
    sched = runtime.backend.scheduler
    before = sched.stats().scheduler.room.sequences_in_use
    handle = sched.submit(
        prompt(runtime, "Tell me a very long story."), replace(GREEDY, max_new_tokens=400), frozenset()
    )
    events = news(handle)
    assert isinstance(next(events), Token)
    assert sched.stats().scheduler.room.sequences_in_use == before + 1
    handle.cancel()
    assert [e for e in events if isinstance(e, Finished)] == [Finished(FinishReason.CANCELLED)]
    assert sched.stats().scheduler.room.sequences_in_use == before  # counted before the Finished was sent
    assert handle.stats.completion_tokens < 400


def test_closing_the_stream_stops_the_answer_and_keeps_its_cache(runtime: Runtime) -> None:
    from edgechat.clients import client_for

    client = client_for(runtime, sampling=replace(GREEDY, max_new_tokens=400))
    cached = runtime.backend.stats().scheduler.room.sessions_cached
    stream = client.chat_stream("Tell me a very long story.", [])
    next(stream)
    stream.close()  # the browser tab went away / Stop
    stats = runtime.backend.stats()  # chat_stream's close waits for the request to end
    assert stats.running == 0 and stats.prefilling == 0
    assert stats.scheduler.room.sessions_cached == cached + 1  # kept for a Continue
    assert client.last_stats.finish_reason is FinishReason.CANCELLED and client.last_stats.completion_tokens < 400
    client.backend.forget_cache(client.cache_key)


def test_next_turn_reuses_the_cached_prefix_and_matches_reprefill(runtime: Runtime) -> None:
    sched, stop, chat = runtime.backend.scheduler, runtime.tokenizer.stop_ids, runtime.tokenizer
    first = prompt(runtime, "What is 2+2?")
    answer = run(sched, first, stop, cache_key="reuse-test")
    history = [Message(role="user", content="What is 2+2?"), Message(role="assistant", content=chat.decode(answer))]
    second = prompt(runtime, "And 3+3?", history)
    handle = sched.submit(second, GREEDY, stop, cache_key="reuse-test")
    reused_tokens = tokens(handle)
    assert handle.stats.reused_tokens >= len(first)
    fresh = run(sched, second, stop)  # no cache key: full prefill
    assert reused_tokens == fresh
    sched.forget_cache("reuse-test")  # New chat: the next request starts from scratch
    handle = sched.submit(second, GREEDY, stop, cache_key="reuse-test")
    assert tokens(handle) == fresh and handle.stats.reused_tokens == 0


def second_turn(
    runtime: Runtime, sched: Scheduler, cache_key: str, between: Callable[[], None]
) -> tuple[list[int], int]:
    """The conversation's first turn, `between()`, then its second turn: (answer tokens, reused tokens)."""
    stop = runtime.tokenizer.stop_ids
    first = prompt(runtime, "Name three colors of the rainbow.")
    answer = run(sched, first, stop, cache_key=cache_key)
    history = [
        Message(role="user", content="Name three colors of the rainbow."),
        Message(role="assistant", content=runtime.tokenizer.decode(answer)),
    ]
    between()
    handle = sched.submit(prompt(runtime, "And two more?", history), GREEDY, stop, cache_key=cache_key)
    return tokens(handle), handle.stats.reused_tokens


def test_parked_and_restored_cache_answers_as_if_it_had_stayed(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    stop = runtime.tokenizer.stop_ids
    stayed = Scheduler(make_engine(max_sequences=2))
    parked = Scheduler(make_engine(max_sequences=1))  # a second conversation takes the one sequence
    try:
        kept, kept_reuse = second_turn(runtime, stayed, "a", lambda: run(stayed, prompt(runtime, "Hi"), stop, "b"))
        assert stayed.stats().scheduler.turns_reused == 1 and stayed.stats().scheduler.room.parks == 0
        restored, restored_reuse = second_turn(
            runtime, parked, "a", lambda: run(parked, prompt(runtime, "Hi"), stop, "b")
        )
        stats = parked.stats()
        assert (
            stats.scheduler.room.parks == 2
            and stats.scheduler.turns_restored == 1
            and stats.scheduler.restore_failures == 0
        )
        assert restored == kept and restored_reuse == kept_reuse > 0
    finally:
        stayed.close()
        parked.close()


class RejectedRestoreEngine(LlamaCppEngine):
    """The real engine whose parked caches come back truncated: llama.cpp must refuse them
    (fault injection; every other call is the real engine)."""

    def save(self, seq: int) -> bytearray:
        data = super().save(seq)
        return data[: len(data) // 2]


def test_a_restore_llama_cpp_rejects_falls_back_to_reprefill(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    stop = runtime.tokenizer.stop_ids
    stayed = Scheduler(make_engine(max_sequences=2))
    broken = Scheduler(make_engine(RejectedRestoreEngine, max_sequences=1))
    try:
        kept, _ = second_turn(runtime, stayed, "a", lambda: run(stayed, prompt(runtime, "Hi"), stop, "b"))
        again, reused = second_turn(runtime, broken, "a", lambda: run(broken, prompt(runtime, "Hi"), stop, "b"))
        stats = broken.stats()
        assert again == kept and reused == 0
        assert (
            stats.scheduler.restore_failures == 1
            and stats.scheduler.turns_reprefilled == 1
            and stats.scheduler.errors == 0
        )
    finally:
        stayed.close()
        broken.close()


def test_queue_cap_refuses_with_a_clear_message(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    small = Scheduler(make_engine(max_sequences=1), max_running=1, max_queue=1)
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
