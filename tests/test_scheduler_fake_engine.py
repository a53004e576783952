"""The scheduler's planner and room on the deterministic FakeEngine, stepped by hand with an
injected clock (tests/fake_scheduler.py): FIFO, LRU parking, restore and its fallback, chunked and
multi-newcomer prefill, timeouts, cancel, expiry, prompt prefixes shared across conversations. No
threads, no sleeps: every test is a fixed sequence of steps. Random traffic against the engine's
caches is test_scheduler_fake_engine_random_traffic.py. Product behaviour (real answers) is tested
on llama.cpp in test_scheduler_llamacpp.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from edgechat.errors import RequestError
from edgechat.scheduler import Scheduler
from edgechat.types import Failed, Finished, FinishReason, Queued, SamplingParams
from tests.fake_engine import FakeEngine, expected_answer
from tests.fake_scheduler import GREEDY_8, MAX_STEPS, MIB, NO_STOP, Clock, answer, answer_of, build, prompt, run


@pytest.fixture
def fake() -> Iterator[tuple[Scheduler, FakeEngine, Clock]]:
    sched, engine, clock = build()
    yield sched, engine, clock
    sched.close()


def test_requests_start_in_arrival_order() -> None:
    sched, _, _ = build(max_running=1)
    handles = [sched.submit(prompt(5, i), GREEDY_8, NO_STOP) for i in range(3)]
    first_token_step: dict[int, int] = {}
    for step in range(MAX_STEPS):
        if not sched.step():
            break
        for i, h in enumerate(handles):
            if i not in first_token_step and h.stats.first_token_at is not None:
                first_token_step[i] = step
    assert sorted(first_token_step, key=first_token_step.get) == [0, 1, 2]
    assert [answer(h) for h in handles] == [expected_answer(prompt(5, i), 8) for i in range(3)]
    sched.close()


def test_waiting_requests_hear_their_place_in_the_queue() -> None:
    sched, _, _ = build(max_running=1)
    first, second = (sched.submit(prompt(5, i), GREEDY_8, NO_STOP) for i in range(2))
    sched.step()
    assert any(isinstance(e, Queued) and e.position == 1 for e in second.poll())
    run(sched)
    assert answer(first) and answer(second) == expected_answer(prompt(5, 1), 8)


def test_queue_cap_refuses_with_a_clear_message() -> None:
    sched, _, _ = build(max_running=1, max_queue=1)
    sched.submit(prompt(5), GREEDY_8, NO_STOP)
    sched.step()
    sched.submit(prompt(5), GREEDY_8, NO_STOP)
    with pytest.raises(RequestError, match="busy"):
        sched.submit(prompt(5), GREEDY_8, NO_STOP)
    assert sched.stats().scheduler.refused == 1


def test_several_newcomers_prefill_in_one_step_with_the_running_decodes(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    runner = sched.submit(prompt(6), GREEDY_8, NO_STOP)
    sched.step()  # the runner's prompt; its first token
    newcomers = [sched.submit(prompt(5, i + 1), GREEDY_8, NO_STOP) for i in range(3)]
    sched.step()
    step = engine.steps()[-1]
    assert len(step) == 4  # one llama_decode: the runner's next token and three whole prompts
    assert sorted(n for _, n, _ in step) == [1, 5, 5, 5] and all(sample for _, _, sample in step)
    run(sched)
    assert answer(runner) == expected_answer(prompt(6), 8)
    assert [answer(h) for h in newcomers] == [expected_answer(prompt(5, i + 1), 8) for i in range(3)]


def test_long_prompt_prefills_in_chunks_while_the_runner_streams() -> None:
    sched, engine, _ = build(FakeEngine(prefill_chunk=8))
    runner = sched.submit(prompt(4), SamplingParams(temperature=0, max_new_tokens=40), NO_STOP)
    sched.step()
    long = sched.submit(prompt(50, 3), GREEDY_8, NO_STOP)
    before = len(runner.poll())
    for _ in range(7):  # 50 prompt tokens at 8 a step
        sched.step()
    assert len(runner.poll()) == 7  # one runner token every step of the prefill
    assert all(sum(n for _, n, s in step if n > 1 or not s) <= 8 for step in engine.steps())
    run(sched)
    assert answer(long) == expected_answer(prompt(50, 3), 8) and before == 1


def test_an_idle_conversation_reuses_its_cached_prefix(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    first = prompt(10)
    reply = answer_of(sched, first, "a")
    follow = first + reply + prompt(4, 9)
    handle = sched.submit(follow, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(follow, 8)
    assert handle.stats.reused_tokens == len(first) + len(reply) - 1  # all but the unfed last token
    assert sched.stats().scheduler.turns_reused == 1


def test_least_recently_used_idle_cache_is_parked_and_restored() -> None:
    sched, engine, _ = build(FakeEngine(max_sequences=2))
    turns = {s: prompt(12, i) for i, s in enumerate("abc")}
    replies = {s: answer_of(sched, turns[s], s) for s in "ab"}
    assert sched.stats().scheduler.room.sessions_cached == 2 and sched.stats().scheduler.room.sessions_parked == 0
    answer_of(sched, turns["c"], "c")  # needs a sequence: "a", least recently used, is parked
    stats = sched.stats()
    assert (
        stats.scheduler.room.sessions_parked == 1
        and stats.scheduler.room.parks == 1
        and stats.scheduler.room.parked_mib > 0
    )
    assert [c for c in engine.calls if c[0] == "save"] == [("save", 0, len(turns["a"]) + 7)]
    follow = turns["a"] + replies["a"] + prompt(3, 5)
    handle = sched.submit(follow, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(follow, 8)
    assert handle.stats.reused_tokens == len(turns["a"]) + 7
    assert (
        sched.stats().scheduler.turns_restored == 1 and sched.stats().scheduler.room.sessions_parked == 1
    )  # "b" parked for it


def test_restore_keeps_only_the_common_prefix_of_a_parked_cache() -> None:
    sched, engine, _ = build(FakeEngine(max_sequences=1))
    first = prompt(12)
    answer_of(sched, first, "a")
    answer_of(sched, prompt(9, 4), "b")  # parks "a": 12 + 7 tokens
    edited = first[:8] + prompt(6, 7)  # the person edited their first question
    handle = sched.submit(edited, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(edited, 8) and handle.stats.reused_tokens == 8
    assert ("restore", 0, 19, True) in engine.calls and ("start", 0, 8) in engine.calls
    assert sched.stats().scheduler.restore_failures == 0


def test_a_restore_the_engine_rejects_falls_back_to_reprefill() -> None:
    engine = FakeEngine(max_sequences=1)
    sched, _, _ = build(engine)
    first = prompt(12)
    reply = answer_of(sched, first, "a")
    engine.corrupt_saves = True
    answer_of(sched, prompt(9, 4), "b")  # parks "a" with bytes the engine will not take back
    follow = first + reply + prompt(3, 5)
    handle = sched.submit(follow, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(follow, 8)
    assert handle.stats.reused_tokens == 0
    stats = sched.stats()
    assert (
        stats.scheduler.restore_failures == 1 and stats.scheduler.turns_reprefilled == 1 and stats.scheduler.errors == 0
    )


def test_short_host_ram_stops_parking_with_a_warning_and_nobody_fails(caplog) -> None:  # noqa: ANN001
    ram = {"available": 8 << 30}
    sched, engine, _ = build(FakeEngine(max_sequences=1), available_ram=lambda: ram["available"])
    first = prompt(12)
    reply = answer_of(sched, first, "a")
    ram["available"] = 100 * MIB  # below the floor
    with caplog.at_level(logging.WARNING, logger="edgechat.kvcache"):
        answer_of(sched, prompt(9, 4), "b")
    assert "host RAM is short" in caplog.text
    assert not any(c[0] == "save" for c in engine.calls) and sched.stats().scheduler.room.sessions_parked == 0
    follow = first + reply + prompt(3, 5)
    handle = sched.submit(follow, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(follow, 8)
    assert sched.stats().scheduler.turns_reprefilled == 1 and sched.stats().scheduler.room.host_ram_short is True


def test_host_cache_keeps_the_most_recent_caches_within_its_size() -> None:
    engine = FakeEngine(max_sequences=1, kv_bytes_per_token=1000)
    sched, _, _ = build(engine, host_cache_bytes=25_000)  # room for one parked 20-token cache
    for i, cache_key in enumerate("abc"):
        answer_of(sched, prompt(12, i), cache_key)
    stats = sched.stats()
    assert (
        stats.scheduler.room.sessions_parked == 1
        and stats.scheduler.room.sessions_dropped == 1
        and stats.scheduler.room.parked_mib < 25_000 / MIB
    )


def test_idle_and_parked_caches_expire_after_the_ttl() -> None:
    sched, engine, clock = build(FakeEngine(max_sequences=1), cache_ttl_s=60)
    answer_of(sched, prompt(12), "a")
    answer_of(sched, prompt(12, 1), "b")  # "a" parked, "b" idle in the sequence
    assert sched.stats().scheduler.room.sessions_parked == 1 and sched.stats().scheduler.room.sessions_cached == 1
    clock.now += 61
    run(sched)
    stats = sched.stats()
    assert (
        stats.scheduler.room.sessions_parked == 0
        and stats.scheduler.room.sessions_cached == 0
        and stats.scheduler.room.sequences_in_use == 0
    )
    assert engine.open_sequences == 0


def test_forget_cache_drops_its_cache_wherever_it_is(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    answer_of(sched, prompt(12), "a")
    sched.forget_cache("a")
    run(sched)
    assert sched.stats().scheduler.room.sessions_cached == 0 and engine.open_sequences == 0
    handle = sched.submit(prompt(12), GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert handle.stats.reused_tokens == 0 and sched.stats().scheduler.turns_reprefilled == 0  # New chat: not a miss


def test_timeout_by_the_clock_stops_and_frees() -> None:
    sched, engine, clock = build(request_timeout_s=5)
    handle = sched.submit(prompt(5), SamplingParams(temperature=0, max_new_tokens=100), NO_STOP)
    for _ in range(3):
        sched.step()
    clock.now += 6
    run(sched)
    events = handle.poll()
    assert events[-1] == Finished(FinishReason.TIMEOUT)
    assert 0 < handle.stats.completion_tokens < 100 and engine.open_sequences == 0


def test_cancel_ends_within_one_step_and_frees_or_keeps_the_cache(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    long = SamplingParams(temperature=0, max_new_tokens=100)
    anonymous, stopped = (
        sched.submit(prompt(5), long, NO_STOP),
        sched.submit(prompt(6, 1), long, NO_STOP, cache_key="a"),
    )
    sched.step()
    anonymous.cancel()
    stopped.cancel()
    sched.step()
    assert anonymous.poll()[-1] == stopped.poll()[-1] == Finished(FinishReason.CANCELLED)
    # Without a cache key the sequence is freed; a stopped answer keeps its cache for Continue.
    assert engine.open_sequences == 1 and sched.stats().scheduler.room.sessions_cached == 1
    assert sched.stats().scheduler.cancelled == 2


def test_stop_id_ends_the_answer_and_keeps_the_conversation_cache(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    ids = prompt(7)
    stop = frozenset({expected_answer(ids, 3)[2]})
    handle = sched.submit(ids, SamplingParams(temperature=0, max_new_tokens=50), stop, cache_key="a")
    run(sched)
    assert answer(handle) == expected_answer(ids, 50, stop) and handle.poll() == []
    assert handle.stats.finish_reason is FinishReason.STOP and sched.stats().scheduler.room.sessions_cached == 1


def test_engine_fault_fails_one_request_and_spares_the_rest(fake) -> None:  # noqa: ANN001
    sched, engine, _ = fake
    long = SamplingParams(temperature=0, max_new_tokens=12)
    handles = [sched.submit(prompt(6, i), long, NO_STOP) for i in range(3)]
    for _ in range(4):
        sched.step()
    engine.fail_seq = 0
    run(sched)
    bad = handles[0].poll()
    assert isinstance(bad[-1], Failed) and "injected device fault" in bad[-1].message
    assert [answer(h) for h in handles[1:]] == [expected_answer(prompt(6, i), 12) for i in (1, 2)]
    assert sched.stats().scheduler.errors == 1 and engine.open_sequences == 0


def test_engine_without_batch_prefill_or_prefix_cache() -> None:
    engine = FakeEngine(max_sequences=2, max_batch=1, prefill_chunk=None, batch_prefill=False, prefix_cache=False)
    sched, _, _ = build(engine)
    handles = [sched.submit(prompt(6, i), GREEDY_8, NO_STOP, cache_key=f"s{i}") for i in range(3)]
    run(sched)
    assert [answer(h) for h in handles] == [expected_answer(prompt(6, i), 8) for i in range(3)]
    assert not any(c[0] in ("step", "save", "restore") for c in engine.calls)
    assert all(len(c[1]) == 1 for c in engine.calls if c[0] == "decode")  # max_batch 1: round-robin
    assert sched.stats().scheduler.room.sessions_cached == 0 and engine.open_sequences == 0


def test_stats_report_kv_use_the_layout_and_one_idle_cache(fake) -> None:  # noqa: ANN001
    sched, _, _ = fake
    answer_of(sched, prompt(10), "a")
    stats = sched.stats()
    room = stats.scheduler.room
    assert stats.alive is True and stats.running == stats.prefilling == stats.waiting == 0
    assert room.kv_tokens_used == 17 and room.kv_tokens_budget == 4 * 256
    assert room.max_sequences == 4 and room.context_per_answer == 256 and stats.scheduler.max_running == 4
    assert room.sessions_cached == 1 and room.sequences_in_use == 1 and stats.scheduler.completed == 1


# ---- prompt prefixes shared across conversations (issue 25) ----

HEAD = list(range(900, 964))  # a room's system prompt: 64 tokens every chat starts with


def test_a_newcomer_waits_for_the_prefix_being_prefilled_and_copies_it() -> None:
    sched, engine, _ = build(FakeEngine(prefill_chunk=16))
    first, second, other = HEAD + prompt(5, 1), HEAD + prompt(5, 2), prompt(6, 9)
    a = sched.submit(first, GREEDY_8, NO_STOP, cache_key="a")
    b = sched.submit(second, GREEDY_8, NO_STOP, cache_key="b")
    c = sched.submit(other, GREEDY_8, NO_STOP, cache_key="c")  # shares nothing: goes ahead of the waiting b
    sched.step()
    assert a.stats.started_at is not None and c.stats.started_at is not None and b.stats.started_at is None
    run(sched)
    assert [answer(h) for h in (a, b, c)] == [expected_answer(p, 8) for p in (first, second, other)]
    assert b.stats.shared_tokens == len(HEAD)
    assert any(call[0] == "copy" for call in engine.calls)
    stats = sched.stats()
    assert (
        stats.scheduler.room.prompt_tokens_prefilled == len(first) + 5 + len(other)
        and stats.scheduler.room.turns_shared == 1
    )


def test_the_only_sequences_idle_owner_is_parked_and_its_copy_is_the_source() -> None:
    sched, engine, _ = build(FakeEngine(max_sequences=1))
    first, second = HEAD + prompt(5, 1), HEAD + prompt(5, 2)
    reply = answer_of(sched, first, "a")
    handle = sched.submit(second, GREEDY_8, NO_STOP, cache_key="b")
    run(sched)
    assert answer(handle) == expected_answer(second, 8) and handle.stats.shared_tokens == len(HEAD)
    follow = first + reply + prompt(3, 7)  # the owner comes back: its own parked cache, whole
    again = sched.submit(follow, GREEDY_8, NO_STOP, cache_key="a")
    run(sched)
    assert answer(again) == expected_answer(follow, 8) and again.stats.reused_tokens == len(first) + len(reply) - 1
    assert sched.stats().scheduler.turns_restored == 1 and sched.stats().scheduler.restore_failures == 0


def test_a_source_evicted_by_a_later_newcomer_of_the_same_step_is_copied_from_its_saved_bytes() -> None:
    """No host cache (nothing is kept parked): the source is still saved for the copy made from it
    in that step, and then dropped."""
    sched, engine, _ = build(FakeEngine(max_sequences=2), host_cache_bytes=0)
    answer_of(sched, prompt(6, 9), "z")  # the least recently used idle cache
    answer_of(sched, HEAD + prompt(5, 1), "a")  # the source
    second, other = HEAD + prompt(5, 2), prompt(7, 11)
    b = sched.submit(second, GREEDY_8, NO_STOP, cache_key="b")  # copies a; z is evicted for it
    c = sched.submit(other, GREEDY_8, NO_STOP, cache_key="c")  # a is evicted for it, in the same step
    run(sched)
    assert answer(b) == expected_answer(second, 8) and b.stats.shared_tokens == len(HEAD)
    assert answer(c) == expected_answer(other, 8) and sched.stats().scheduler.errors == 0
