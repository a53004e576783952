"""Random traffic on the deterministic FakeEngine, stepped by hand: questions, follow-ups, Stop,
New chat and expiry in a random order, with and without a shared head and time slicing; after
every step the planner's and room's record of each sequence equals what the engine holds, and
every answer is the one its prompt gets alone. The rest of the planner's fake-engine tests are in
test_scheduler_fake_engine.py."""

from __future__ import annotations

import random

import pytest

from edgechat.scheduler import RequestEvents
from edgechat.types import Failed, Finished, FinishReason, SamplingParams, Token
from tests.fake_engine import FakeEngine, expected_answer
from tests.fake_scheduler import NO_STOP, build, prompt


@pytest.mark.parametrize("time_slice", [0, 3])
@pytest.mark.parametrize("head", [0, 64])
@pytest.mark.parametrize("seed", range(12))
def test_random_traffic_keeps_every_cache_record_exact(seed: int, head: int, time_slice: int) -> None:
    """Questions, follow-ups that share some or none of the cache, Stop, New chat and expiry in a
    random order: after every step the scheduler's record of each sequence equals what the engine
    holds, so every keep, park and restore is planned on the truth. With `head`, every new chat
    starts with the same tokens (a room's system prompt): sources are copied, parked, restored and
    rewritten too, and every answer is still the one its prompt gets alone. With `time_slice`,
    answers are also parked mid-way and resumed whenever people wait (issue 29)."""
    rng = random.Random(seed)
    sched, engine, clock = build(
        FakeEngine(max_sequences=3, max_len=400, prefill_chunk=16), cache_ttl_s=30, time_slice=time_slice
    )
    history: dict[str, list[int]] = {f"s{i}": [] for i in range(6)}
    live: dict[str, tuple[RequestEvents, list[int], list[int]]] = {}
    for _ in range(250):
        cache_key = rng.choice(sorted(history))
        roll = rng.random()
        if cache_key not in live and roll < 0.3:
            past = history[cache_key][-200:]
            past = past[: rng.randint(len(past) // 2, len(past))]  # an edited or regenerated turn
            ids = (past or list(range(900, 900 + head))) + prompt(rng.randint(3, 12), rng.randrange(50))
            n = rng.randint(1, 20)
            live[cache_key] = (
                sched.submit(ids, SamplingParams(temperature=0, max_new_tokens=n), NO_STOP, cache_key),
                ids,
                [],
            )
        elif cache_key in live and roll < 0.4:
            live[cache_key][0].cancel(rng.choice([FinishReason.CANCELLED, FinishReason.STOP]))
        elif roll < 0.42:
            sched.forget_cache(cache_key)
            history[cache_key] = []
        sched.step()
        clock.now += rng.random() * 2
        for slot in sched._planner.room.resident:  # the records, against the engine
            if slot.seq >= 0:
                assert engine.cache(slot.seq) == slot.tokens
        for name, (handle, ids, got) in list(live.items()):
            events = handle.poll()
            got += [e.id for e in events if isinstance(e, Token)]
            if any(isinstance(e, (Finished, Failed)) for e in events):
                assert got == expected_answer(ids, len(got))  # a kept, restored or fresh cache: same answer
                history[name] = ids + got
                del live[name]
    assert sched.stats().scheduler.errors == 0 and sched.stats().scheduler.restore_failures == 0
    assert (sched.stats().scheduler.room.turns_shared > 0) == (head > 0)
    assert (sched.stats().scheduler.slices > 0) == (time_slice > 0)
