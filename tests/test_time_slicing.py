"""Time slicing (--time-slice, issue 29): while people wait and every sequence is busy, an answer
that has made a slice of tokens is parked in host RAM and the next person in line gets its place;
it resumes, unchanged, when its turn comes round again. The planner on the deterministic FakeEngine
(stepped by hand: which step each first token comes in), then the product on the real GGUF:
sliced answers equal the answers each question gets alone."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from edgechat.config import parse_settings
from edgechat.metrics import ServingMetrics
from edgechat.runtime import load_runtime
from edgechat.scheduler import RequestEvents, Scheduler
from edgechat.types import Failed, Finished, FinishReason, Message, Queued, SamplingParams, Token
from tests.conftest import GREEDY, answer_ids
from tests.fake_engine import FakeEngine, expected_answer
from tests.fake_scheduler import MAX_STEPS, MIB, NO_STOP, Clock, prompt


def fake_scheduler(slots: int, time_slice: int, **options) -> tuple[Scheduler, FakeEngine]:  # noqa: ANN003
    engine = FakeEngine(max_sequences=slots, max_len=256)
    options.setdefault("available_ram", lambda: 8 << 30)
    options.setdefault("host_cache_bytes", 64 * MIB)
    sched = Scheduler(engine, time_slice=time_slice, start=False, **options)
    return sched, engine


def step_all(sched: Scheduler, handles: list[RequestEvents]) -> tuple[dict[int, int], dict[int, int]]:
    """Step until idle: the step of each request's first token, and of its end."""
    first: dict[int, int] = {}
    done: dict[int, int] = {}
    for step in range(MAX_STEPS):
        if not sched.step():
            return first, done
        for i, handle in enumerate(handles):
            if i not in first and handle.stats.first_token_at is not None:
                first[i] = step
            if i not in done and handle.stats.finished_at is not None:
                done[i] = step
    raise AssertionError("the scheduler never went idle")


def tokens_of(handle: RequestEvents) -> list[int]:
    events = handle.poll()
    assert isinstance(events[-1], (Finished, Failed)), events[-1:]
    assert not any(isinstance(e, Failed) for e in events)
    return [e.id for e in events if isinstance(e, Token)]


def test_people_waiting_get_a_place_after_a_slice_and_every_answer_is_unchanged() -> None:
    sched, engine = fake_scheduler(slots=2, time_slice=4)
    greedy = replace(GREEDY, max_new_tokens=16)
    prompts = [prompt(6, i) for i in range(4)]
    handles = [sched.submit(p, greedy, NO_STOP, cache_key=f"s{i}") for i, p in enumerate(prompts)]
    first, done = step_all(sched, handles)
    assert [tokens_of(h) for h in handles] == [expected_answer(p, 16) for p in prompts]
    # The two who waited had their first token long before the first two answers ended ...
    assert max(first[2], first[3]) < min(done[0], done[1])
    assert max(first[2], first[3]) <= first[0] + 6  # a slice of 4 tokens, a step to park, one to prefill
    # ... because the running answers were parked and restored, whole (no recompute).
    stats = sched.stats().scheduler
    assert stats is not None
    assert stats.slices >= 4 and stats.errors == 0 and stats.restore_failures == 0
    restores = [c for c in engine.calls if c[0] == "restore"]
    assert len(restores) >= stats.slices
    sched.close()


def test_a_resumed_answer_counts_its_prompt_once() -> None:
    """What /metrics says was read from a kept cache counts each turn's prompt once, however often
    its answer was parked and resumed (a resume is no new prompt)."""
    sched, _ = fake_scheduler(slots=2, time_slice=4)
    greedy = replace(GREEDY, max_new_tokens=16)
    firsts = [prompt(6, i) for i in range(4)]
    turn_one = []
    for i, first in enumerate(firsts):  # one at a time: nobody waits, nothing is sliced
        handle = sched.submit(first, greedy, NO_STOP, cache_key=f"s{i}")
        step_all(sched, [handle])
        turn_one.append((first + tokens_of(handle), handle))
    seconds = [held + prompt(3, 10 + i) for i, (held, _) in enumerate(turn_one)]
    handles = [sched.submit(p, greedy, NO_STOP, cache_key=f"s{i}") for i, p in enumerate(seconds)]
    step_all(sched, handles)
    assert [tokens_of(h) for h in handles] == [expected_answer(p, 16) for p in seconds]
    stats = sched.stats().scheduler
    assert stats is not None and stats.slices >= 4
    everyone = [h for _, h in turn_one] + handles
    reused = sum(h.stats.reused_tokens for h in everyone)
    assert reused >= 4 * 6  # every second turn read its first turn from its own cache
    assert stats.room.prompt_tokens_reused == reused
    sched.close()


def test_without_slicing_the_queue_is_first_come_first_served() -> None:
    sched, _ = fake_scheduler(slots=2, time_slice=0)
    greedy = replace(GREEDY, max_new_tokens=16)
    handles = [sched.submit(prompt(6, i), greedy, NO_STOP) for i in range(4)]
    first, done = step_all(sched, handles)
    assert min(first[2], first[3]) > min(done[0], done[1])
    assert sched.stats().scheduler.slices == 0
    sched.close()


def test_nobody_waiting_means_no_slice() -> None:
    sched, engine = fake_scheduler(slots=2, time_slice=2)
    greedy = replace(GREEDY, max_new_tokens=20)
    handles = [sched.submit(prompt(6, i), greedy, NO_STOP) for i in range(2)]
    step_all(sched, handles)
    assert [tokens_of(h) for h in handles] == [expected_answer(prompt(6, i), 20) for i in range(2)]
    assert sched.stats().scheduler.slices == 0 and not any(c[0] == "save" for c in engine.calls)
    sched.close()


def test_answers_with_sampler_state_keep_their_place() -> None:
    """A sampled answer's random stream (and penalties, a grammar) lives in the engine's sampler,
    which parking does not carry: such answers are never sliced, so they stay what they would be."""
    sched, _ = fake_scheduler(slots=1, time_slice=2)
    sampled = SamplingParams(temperature=0.7, max_new_tokens=10)
    penalized = SamplingParams(temperature=0.0, repetition_penalty=1.2, max_new_tokens=10)
    handles = [sched.submit(prompt(6, 0), sampled, NO_STOP), sched.submit(prompt(6, 1), penalized, NO_STOP)]
    handles.append(sched.submit(prompt(6, 2), replace(GREEDY, max_new_tokens=4), NO_STOP))
    first, done = step_all(sched, handles)
    assert first[1] > done[0] and first[2] > done[1]
    assert sched.stats().scheduler.slices == 0
    sched.close()


def test_a_parked_answer_cancelled_while_it_waits_frees_everything() -> None:
    sched, engine = fake_scheduler(slots=1, time_slice=3)
    greedy = replace(GREEDY, max_new_tokens=12)
    first = sched.submit(prompt(6, 0), greedy, NO_STOP)
    second = sched.submit(prompt(6, 1), greedy, NO_STOP)
    for _ in range(MAX_STEPS):
        sched.step()
        if sched.stats().scheduler.slices:
            break
    assert first.stats.first_token_at is not None and first.stats.finished_at is None
    first.cancel(FinishReason.CANCELLED)
    step_all(sched, [second])
    assert tokens_of(second) == expected_answer(prompt(6, 1), 12)
    events = first.poll()
    assert isinstance(events[-1], Finished) and events[-1].reason is FinishReason.CANCELLED
    assert sched.stats().scheduler.room.sequences_in_use <= 1 and sched.stats().scheduler.errors == 0
    assert set(engine._cache) == {s.seq for s in sched._planner.room.resident if s.seq >= 0}  # nothing leaked
    sched.close()


def test_answers_waiting_for_their_turn_stay_within_the_host_cache() -> None:
    """--host-cache bounds every parked cache, an answer's waiting for its next slice too: the
    parked bytes /metrics reports count them and never pass the bound; an answer whose cache would
    not fit beside the others keeps its sequence instead (FakeEngine: 64 bytes a cached token)."""
    capacity = 1000  # one sliced answer (6 prompt tokens + a slice of 3: 9 x 64 = 576 bytes), not two
    sched, _ = fake_scheduler(slots=1, time_slice=3, host_cache_bytes=capacity)
    greedy = replace(GREEDY, max_new_tokens=12)
    prompts = [prompt(6, i) for i in range(3)]
    handles = [sched.submit(p, greedy, NO_STOP, cache_key=f"s{i}") for i, p in enumerate(prompts)]
    most_waiting = 0
    for _ in range(MAX_STEPS):
        if not sched.step():
            break
        waiting = sum(r.resume.nbytes for r in sched._planner.waiting if r.resume is not None)
        parked = sched.stats().scheduler.room.parked_mib * MIB
        assert waiting <= parked <= capacity, (waiting, parked)
        most_waiting = max(most_waiting, waiting)
    assert [tokens_of(h) for h in handles] == [expected_answer(p, 12) for p in prompts]
    assert most_waiting > 0 and sched.stats().scheduler.slices >= 1  # still taking turns, within the bound
    sched.close()


def told_and_waited(time_slice: int) -> tuple[float, float]:
    """The third of three people on one sequence, steps of 0.25 s on the clock: the wait the last
    queue message before their first token announced, and the wait from that message on."""
    clock = Clock()
    sched, _ = fake_scheduler(slots=1, time_slice=time_slice, clock=clock)
    greedy = replace(GREEDY, max_new_tokens=16)
    handles = [sched.submit(prompt(6, i), greedy, NO_STOP) for i in range(3)]
    told: tuple[float, float] | None = None  # (when, announced wait)
    for _ in range(MAX_STEPS):
        clock.now += 0.25
        if not sched.step():
            break
        for event in handles[2].poll():
            if isinstance(event, Queued) and handles[2].stats.first_token_at is None:
                told = (clock.now, event.eta_s)  # (a sliced answer is told its place again later)
    sched.close()
    assert told is not None and handles[2].stats.first_token_at is not None
    return told[1], handles[2].stats.first_token_at - told[0]


def test_a_person_in_line_is_told_about_the_wait_they_get() -> None:
    """The queue message's "about N s" (the page shows it) counts time slices when the answers in
    service take turns, whole answers when they do not: within a factor of two either way."""
    for time_slice in (4, 0):
        told, waited = told_and_waited(time_slice)
        assert waited / 2 <= told <= waited * 2, (time_slice, told, waited)


# ---- the product, on the real GGUF ----

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how bread is made, step by step.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of sailing ships.",
]


def test_sliced_answers_equal_their_solo_answers_on_llamacpp() -> None:
    """Four people ask at once on two sequences with a slice of 8 tokens: the two who wait get
    their first token before either running answer ends, and every greedy answer, parked and
    restored several times on the way, equals the answer its question gets alone."""
    settings = parse_settings(["--context-length", "512", "--max-running", "2", "--time-slice", "8"], env={})
    runtime = load_runtime(settings)
    try:
        sched, chat = runtime.backend.scheduler, runtime.tokenizer
        greedy = replace(GREEDY, max_new_tokens=40)
        prompts = [chat.render([Message(role="user", content=q)]) for q in QUESTIONS]
        solo = [answer_ids(sched.submit(p, greedy, chat.stop_ids)) for p in prompts]
        assert all(len(s) > 24 for s in solo), [len(s) for s in solo]  # long enough to be sliced twice
        assert sched.stats().scheduler.slices == 0  # alone, nobody waited
        handles = [sched.submit(p, greedy, chat.stop_ids) for p in prompts]
        together = [answer_ids(h) for h in handles]
        assert together == solo
        stats = sched.stats().scheduler
        assert stats is not None
        assert stats.slices >= 4 and stats.restore_failures == 0 and stats.errors == 0
        ran_first = min(h.stats.finished_at for h in handles[:2])  # type: ignore[type-var]
        assert all(h.stats.first_token_at < ran_first for h in handles[2:])  # type: ignore[operator]
        metrics = ServingMetrics()  # what an operator's Prometheus reads
        metrics.bind(runtime.backend.stats, lambda: runtime.info)
        exported = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
        }
        assert exported["edgechat:time_slices_total"] == stats.slices
    finally:
        runtime.close()


SAMPLED = [  # a random stream, penalties' history and a grammar's parse state, each carried along
    SamplingParams(temperature=0.8, seed=7, max_new_tokens=40),
    SamplingParams(temperature=0.7, repetition_penalty=1.3, seed=11, max_new_tokens=40),
    SamplingParams(temperature=0.6, seed=5, max_new_tokens=40, grammar='root ::= "(" [a-z ]+ ")" [a-z ]+'),
    replace(GREEDY, max_new_tokens=40),
]


def test_sampled_answers_take_turns_and_go_on_as_they_would_have_on_llamacpp() -> None:
    """The page's answers are sampled (temperature 0.2): they take turns too. llama.cpp's engine
    carries each answer's sampler (its seeded random stream, the penalties' history, a grammar's
    parse state) across the park, so every answer sliced on two sequences equals the answer the
    same request gets alone (same seed)."""
    settings = parse_settings(["--context-length", "512", "--max-running", "2", "--time-slice", "8"], env={})
    runtime = load_runtime(settings)
    try:
        sched, chat = runtime.backend.scheduler, runtime.tokenizer
        prompts = [chat.render([Message(role="user", content=q)]) for q in QUESTIONS]
        solo = [answer_ids(sched.submit(p, s, chat.stop_ids)) for p, s in zip(prompts, SAMPLED, strict=True)]
        assert all(len(s) > 16 for s in solo), [len(s) for s in solo]  # long enough to be sliced
        handles = [sched.submit(p, s, chat.stop_ids) for p, s in zip(prompts, SAMPLED, strict=True)]
        together = [answer_ids(h) for h in handles]
        assert together == solo
        stats = sched.stats().scheduler
        assert stats is not None and stats.slices >= 4 and stats.restore_failures == 0 and stats.errors == 0
        ran_first = min(h.stats.finished_at for h in handles[:2])  # type: ignore[type-var]
        assert all(h.stats.first_token_at < ran_first for h in handles[2:])  # type: ignore[operator]
    finally:
        runtime.close()
