"""A Scheduler on the deterministic FakeEngine, stepped by hand with an injected clock: the helpers
the fake-engine scheduler tests share (tests/test_scheduler_fake_engine*.py). No threads, no
sleeps: a test is a fixed sequence of steps."""

from __future__ import annotations

from dataclasses import replace

from edgechat.scheduler import RequestEvents, Scheduler
from edgechat.types import Failed, Finished, SamplingParams, Token
from tests.conftest import GREEDY
from tests.fake_engine import FakeEngine

MIB = 1 << 20
GREEDY_8 = replace(GREEDY, max_new_tokens=8)
NO_STOP: frozenset[int] = frozenset()
MAX_STEPS = 500


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(engine: FakeEngine | None = None, **options) -> tuple[Scheduler, FakeEngine, Clock]:  # noqa: ANN003
    engine = engine or FakeEngine()
    clock = Clock()
    options.setdefault("host_cache_bytes", 64 * MIB)
    options.setdefault("available_ram", lambda: 8 << 30)
    return Scheduler(engine, clock=clock, start=False, **options), engine, clock


def run(sched: Scheduler) -> int:
    """Step until nothing is left to do; how many steps it took."""
    for n in range(MAX_STEPS):
        if not sched.step():
            return n
    raise AssertionError("the scheduler never went idle")


def answer(handle: RequestEvents) -> list[int]:
    events = handle.poll()
    assert isinstance(events[-1], (Finished, Failed)), events[-1:]
    return [e.id for e in events if isinstance(e, Token)]


def prompt(n: int, seed: int = 0) -> list[int]:
    return [(seed * 7 + i) % 50 + 3 for i in range(n)]


def answer_of(sched: Scheduler, ids: list[int], cache_key: str | None, n: int = 8) -> list[int]:
    handle = sched.submit(ids, SamplingParams(temperature=0, max_new_tokens=n), NO_STOP, cache_key=cache_key)
    run(sched)
    return answer(handle)
