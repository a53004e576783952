"""A room on emulated TPUs in simulated time (issue 28): the real scheduler and sail engines over the
sophon-sail emulator with its timing model on (tests/sail_emulator/sophon/_emu_timing.py), stepped
by hand; the scheduler's clock advances by the TPU time each step took, so nothing waits and the
figures do not depend on this box. Used by `bench/room.py --backend sail-emulated` and by
tests/sail/test_timing.py (the single-stream calibration).

Within a step, chips decode at the same time (ChipsEngine runs them together: the step costs the
busiest chip's decode time) and prompts are read one after the other (the scheduler calls prefill
one request at a time: the step costs their sum), as the code runs them on a real box.
"""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMULATOR = REPO / "tests" / "sail_emulator"
if str(EMULATOR) not in sys.path:
    sys.path.insert(0, str(EMULATOR))

from sophon import sail  # noqa: E402 — the emulator (a test double), found through the path above

from edgechat.engines.sail_chips import load_engines  # noqa: E402
from edgechat.scheduler import Scheduler  # noqa: E402
from edgechat.types import Failed, Finished, SamplingParams, Token  # noqa: E402

# Sophgo's published single-stream figures for the bmodels README lists (first token s, tok/s):
# sophgo/sophon-demo `sample/Qwen/README.md` section 6 and `sample/Baichuan2/README.md`, SE7-32
# (BM1684X, 8-core A53 @ 2.3 GHz), SDK V24.04.01, read 2026-12-04. Not measured by edgechat.
CALIBRATION: dict[str, tuple[float, float]] = {
    "qwen2.5-1.5b_int4_seq512_1dev": (0.185, 41.078),
    "qwen2.5-7b_int4_seq512_1dev": (0.652, 10.26),
    "qwen2.5-7b_int4_seq2048_1dev": (2.704, 9.753),
    "qwen3-4b_int4_seq512_1dev": (0.464, 15.857),
    "deepseek-r1-distill-qwen2-1.5b_w4bf16_seq8192": (4.983, 25.689),
    "deepseek-r1-distill-qwen2-7b_w4bf16_seq2048": (2.937, 8.301),
    "baichuan2-7b_int8_1dev": (0.825, 5.510),
    "baichuan2-7b_int4_1dev": (0.817, 7.603),
}
ROOM_MODEL = "qwen2.5-7b_int4_seq512_1dev"  # the room's stand-in: a 7B model at 512 tokens
VOCAB = 400


@dataclass
class SimClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def write_room_bmodel(path: Path, *, max_len: int = 512, batch: int = 1, history: bool = False) -> Path:
    """A tiny emulated LLM-TPU (Qwen2-style) bmodel standing in for the calibrated one."""
    return sail.write_bmodel(
        path, arch="qwen2", layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=VOCAB,
        quant="int4", lm_head_topk=True, rope_base=1000000.0, max_len=max_len, batch=batch, history_kv=history,
    )  # fmt: skip


def timed(engine: Any, clock: SimClock) -> None:
    """Advance `clock` by the TPU time of each decode (busiest chip) and prefill (its chip)."""
    busy, decode, prefill = sail.BUSY, engine.decode, engine.prefill

    def timed_decode(batch: Sequence[tuple[int, int]]) -> list[Any]:
        before = dict(busy)
        try:
            return decode(batch)
        finally:
            clock.now += max((busy[d] - before.get(d, 0.0) for d in busy), default=0.0)

    def timed_prefill(seq: int, tokens: Sequence[int]) -> int:
        before = sum(busy.values())
        try:
            return prefill(seq, tokens)
        finally:
            clock.now += sum(busy.values()) - before

    engine.decode, engine.prefill = timed_decode, timed_prefill
    if engine.batch_prefill:  # ChipsEngine.step: the chips work at the same time, the busiest sets the pace
        step = engine.step

        def timed_step(feeds: Sequence[Any]) -> list[Any]:
            before, start = dict(busy), clock.now
            try:
                return step(feeds)
            finally:
                clock.now = start + max((busy[d] - before.get(d, 0.0) for d in busy), default=0.0)

        engine.step = timed_step


@dataclass
class Person:
    cache_key: str
    questions: list[list[int]]
    history: list[int] = field(default_factory=list)
    handle: Any = None
    prompt: list[int] = field(default_factory=list)
    turns: list[dict[str, float]] = field(default_factory=list)
    answer: list[int] = field(default_factory=list)


def simulate(
    bmodel: Path,
    dev_ids: Sequence[int],
    slots: int,
    *,
    people: int,
    turns: int,
    tokens: int,
    model: str = ROOM_MODEL,
    batch_cost: float = 0.1,
    seq_len: int | None = None,
    system_tokens: int = 20,
    question_tokens: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """`people` each ask `turns` questions keeping their history (think time 0: the next question
    is asked as the answer ends), answers exactly `tokens` long, greedy. Simulated seconds."""
    ftl_s, tok_s = CALIBRATION[model]
    sail.set_timing(sail.Timing(ftl_s, tok_s, batch_cost, seq_len))
    _, engine = load_engines(bmodel, VOCAB, list(dev_ids), slots)
    clock = SimClock()
    timed(engine, clock)
    scheduler = Scheduler(engine, start=False, clock=clock, max_queue=4 * people, cache_ttl_s=1e9)
    rng = random.Random(seed)
    system = [rng.randrange(3, VOCAB) for _ in range(system_tokens)]
    room = [
        Person(f"p{i}", [[rng.randrange(3, VOCAB) for _ in range(question_tokens)] for _ in range(turns)], system)
        for i in range(people)
    ]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    errors = 0
    try:
        while any(p.handle is not None or len(p.turns) < turns for p in room):
            for p in room:
                if p.handle is None and len(p.turns) < turns:
                    p.prompt = p.history + p.questions[len(p.turns)]
                    p.answer = []
                    p.handle = scheduler.submit(p.prompt, sampling, frozenset(), cache_key=p.cache_key)
            scheduler.step()
            for p in room:
                for event in p.handle.poll() if p.handle is not None else []:
                    if isinstance(event, Token):
                        p.answer.append(event.id)
                    elif isinstance(event, (Finished, Failed)):
                        errors += isinstance(event, Failed)
                        s = p.handle.stats
                        p.turns.append({"ftl": s.first_token_s or 0.0, "tps": s.decode_tps or 0.0,
                                        "reused": s.reused_tokens, "prompt": len(p.prompt)})  # fmt: skip
                        p.history, p.handle = p.prompt + p.answer, None
    finally:
        scheduler.close()
        engine.close()
        sail.set_timing(None)
    return _figures(room, clock.now, tokens, errors)


def _figures(room: list[Person], span: float, tokens: int, errors: int) -> dict[str, Any]:
    ftls = sorted(t["ftl"] for p in room for t in p.turns)
    per_person = [statistics.fmean(t["tps"] for t in p.turns) for p in room]
    answers = sum(len(p.turns) for p in room)

    def pct(q: float) -> float:
        return round(ftls[min(len(ftls) - 1, int(q * len(ftls)))], 2)

    later = [t for p in room for t in p.turns[1:]]
    return {
        "simulated_s": round(span, 1),
        "aggregate_tps": round(answers * tokens / span, 2),
        "per_person_tps_min": round(min(per_person), 2),
        "per_person_tps_median": round(statistics.median(per_person), 2),
        "ftl_p50_s": pct(0.5),
        "ftl_p95_s": pct(0.95),
        "later_turns_prompt_reused": round(
            sum(t["reused"] for t in later) / max(1, sum(t["prompt"] for t in later)), 2
        ),
        "errors": errors,
    }


def single_stream(model: str, tokens: int = 32, max_len: int = 256) -> dict[str, float]:
    """One person, one question, on one chip: the figures the calibration must reproduce."""
    with _tmp() as directory:
        bmodel = write_room_bmodel(Path(directory) / "one.bmodel", max_len=max_len)
        ftl_s, tok_s = CALIBRATION[model]
        sail.set_timing(sail.Timing(ftl_s, tok_s))
        _, engine = load_engines(bmodel, VOCAB, [0], 1)
        clock = SimClock()
        timed(engine, clock)
        scheduler = Scheduler(engine, start=False, clock=clock)
        try:
            handle = scheduler.submit(
                list(range(3, 40)), SamplingParams(temperature=0.0, max_new_tokens=tokens), frozenset()
            )
            for _ in range(tokens + 4):
                scheduler.step()
            events = handle.poll()
            assert isinstance(events[-1], Finished), events[-1:]
            return {"ftl_s": handle.stats.first_token_s or 0.0, "tok_s": handle.stats.decode_tps or 0.0}
        finally:
            scheduler.close()
            engine.close()
            sail.set_timing(None)


def _tmp() -> Any:
    import tempfile

    return tempfile.TemporaryDirectory(prefix="edgechat-sail-room-")


ROOM = {"people": 30, "turns": 5, "tokens": 32}
ROOM_LEN, REAL_LEN = 256, 512  # the emulated context (fast enough here); the calibrated bmodel's


def room_table(directory: Path, **room: int) -> dict[str, Any]:
    """bench/room.py --backend sail-emulated: 1 chip batch 1, 3 chips batch 1, 1 chip batch 4, each
    with a static bmodel (every turn re-reads the chat) and with history K/V (new tokens only)."""
    import os

    os.environ["SAIL_EMULATOR_TPU_NUM"] = "3"
    room = {**ROOM, **room}
    static = write_room_bmodel(directory / "static.bmodel", max_len=ROOM_LEN)
    history = write_room_bmodel(directory / "history.bmodel", max_len=ROOM_LEN, history=True)
    batch4 = write_room_bmodel(directory / "batch4.bmodel", max_len=ROOM_LEN, batch=4)
    batch4_history = write_room_bmodel(directory / "batch4-history.bmodel", max_len=ROOM_LEN, batch=4, history=True)
    rows: dict[str, Any] = {}
    configs = {
        "1 chip, batch 1": (static, [0], 2),
        "1 chip, batch 1, history K/V": (history, [0], 2),
        "3 chips, batch 1": (static, [0, 1, 2], 2),
        "3 chips, batch 1, history K/V": (history, [0, 1, 2], 2),
        "1 chip, batch 4": (batch4, [0], 4),
        "1 chip, batch 4, history K/V": (batch4_history, [0], 4),
    }
    for name, (bmodel, ids, slots) in configs.items():
        rows[name] = {"dev_ids": ids, "kv_slots_per_chip": slots,
                      **simulate(bmodel, ids, slots, seq_len=REAL_LEN, **room)}  # fmt: skip
    ftl, tps = CALIBRATION[ROOM_MODEL]
    return {
        "simulated": True,
        "model": f"{ROOM_MODEL} as Sophgo publishes it: first token {ftl} s, {tps} tok/s (one stream, SE7-32)",
        "timing": "tests/sail_emulator/sophon/_emu_timing.py: static prefill = first-token time, "
        "history prefill = its share of 512 rows, decode step = 1/tok_s x (1 + 0.1 x (batch - 1))",
        "room": {**room, "think_time_s": 0, "system_tokens": 20, "question_tokens": 16, "context": ROOM_LEN},
        "configurations": rows,
    }
