"""Faults stay inside the request they hit: the session sees a clear error and its partial answer,
everyone else finishes, and the next request works."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from edgechat.engines.llamacpp import LlamaCppEngine, LlamaCppModel
from edgechat.errors import RequestError
from edgechat.runtime import Runtime
from edgechat.scheduler import Scheduler
from edgechat.types import Failed, Message, SamplingParams, Token
from tests.conftest import GREEDY

NO_STOP: frozenset[int] = frozenset()
LONG = replace(GREEDY, max_new_tokens=24)


class FaultInjectingEngine(LlamaCppEngine):
    """The real llama.cpp engine, made to raise inside a step once a chosen sequence has decoded
    `fail_after` tokens (fault injection, not a stand-in: every other call is the real engine)."""

    fail_seq: int | None = None
    fail_after = 5

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: object = None) -> int:
        self._decoded = {**getattr(self, "_decoded", {}), seq: 0}
        return super().start(seq, sampling, keep, carried)  # type: ignore[arg-type]

    def step(self, feeds: Sequence[tuple[int, Sequence[int], bool]]) -> list[int | None]:
        for seq, fed, _ in feeds:
            if seq == self.fail_seq and len(fed) == 1 and self._decoded[seq] >= self.fail_after:
                raise RuntimeError("injected device fault")
        out = super().step(feeds)
        for seq, fed, _ in feeds:
            self._decoded[seq] += len(fed) == 1
        return out


@pytest.fixture
def faulty(runtime: Runtime) -> Iterator[tuple[Scheduler, FaultInjectingEngine]]:
    engine = FaultInjectingEngine(
        LlamaCppModel(Path(runtime.backend.scheduler.engine.model_path)), context_length=512, max_sequences=3
    )
    sched = Scheduler(engine)
    yield sched, engine
    sched.close()
    engine.close()


def prompt(runtime: Runtime, question: str) -> list[int]:
    return runtime.tokenizer.render([Message(role="user", content=question)])


def collect(handle) -> tuple[list[int], list[str]]:  # noqa: ANN001
    tokens, errors = [], []
    for event in handle:
        if isinstance(event, Token):
            tokens.append(event.id)
        elif isinstance(event, Failed):
            errors.append(event.message)
    return tokens, errors


def test_engine_error_in_one_request_spares_the_others(runtime: Runtime, faulty) -> None:  # noqa: ANN001
    sched, engine = faulty
    questions = ["What is 2+2?", "What color is the sky on a clear day?", "What is the opposite of hot?"]
    solo = [collect(sched.submit(prompt(runtime, q), LONG, NO_STOP))[0] for q in questions]
    engine.fail_seq = 0  # the first sequence handed out: the first request below
    handles = [sched.submit(prompt(runtime, q), LONG, NO_STOP) for q in questions]
    results: dict[int, tuple[list[int], list[str]]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, collect(handles[i]))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bad_tokens, bad_errors = results[0]
    assert bad_errors and "injected device fault" in bad_errors[0] and "try again" in bad_errors[0]
    assert bad_tokens == solo[0][: len(bad_tokens)] and len(bad_tokens) >= 5  # the partial answer is kept
    assert results[1] == (solo[1], []) and results[2] == (solo[2], [])
    engine.fail_seq = None
    assert collect(sched.submit(prompt(runtime, questions[0]), LONG, NO_STOP)) == (solo[0], [])
    assert sched.stats().scheduler.errors == 1 and sched.stats().scheduler.room.sequences_in_use == 0


def test_dead_scheduler_is_reported_and_a_new_runtime_serves(runtime: Runtime, faulty) -> None:  # noqa: ANN001
    sched, _ = faulty

    def broken_schedule(*_: object):  # noqa: ANN202
        raise RuntimeError("scheduler bug")

    sched._planner.decide = broken_schedule  # type: ignore[method-assign]
    tokens, errors = collect(sched.submit(prompt(runtime, "Hi"), LONG, NO_STOP))
    assert tokens == [] and "scheduler bug" in errors[0]
    assert sched.stats().alive is False
    with pytest.raises(RequestError, match="engine stopped"):
        sched.submit(prompt(runtime, "Hi"), LONG, NO_STOP)
    fresh = Scheduler(
        LlamaCppEngine(
            LlamaCppModel(Path(runtime.backend.scheduler.engine.model_path)), context_length=512, max_sequences=1
        )
    )
    try:
        assert collect(fresh.submit(prompt(runtime, "What is 2+2?"), LONG, NO_STOP))[0]
    finally:
        fresh.close()
        fresh.engine.close()


def test_a_reader_that_never_reads_blocks_no_one(runtime: Runtime) -> None:
    sched = runtime.backend.scheduler
    idle_reader = sched.submit(prompt(runtime, "Tell me a story."), replace(GREEDY, max_new_tokens=200), NO_STOP)
    tokens, errors = collect(sched.submit(prompt(runtime, "What is 2+2?"), GREEDY, runtime.tokenizer.stop_ids))
    assert "4" in runtime.tokenizer.decode(tokens) and not errors
    idle_reader.cancel()
