"""Batch-N bmodels (`llm_convert.py -b 4`): up to four answers decode in one graph call per layer,
fewer running answers pad the batch, prefill stays one request at a time, and every answer is
token for token what the numpy reference (and a batch-1 bmodel) gives, with 1 to 4 running."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgechat.scheduler import Scheduler
from edgechat.types import Finished, SamplingParams, Token
from tests.sail.harness import sail
from tests.sail.qwen_harness import QwenReference, Variant, write_qwen_bmodel, write_token_config

NEW = 10
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]


@pytest.fixture(scope="module", params=[("int8", True), ("int4", False)], ids=["int8-topk", "int4-logits"])
def bmodels(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    site = tmp_path_factory.mktemp("site")
    sail.install_as(site, "3.9.4", "sophon")
    sys.path.insert(0, str(site))
    from edgechat.tokenizers.hf import HfTokenizer

    cfg = write_token_config(tmp_path_factory.mktemp("qwen") / "config")
    vocab, (quant, topk) = HfTokenizer(cfg).vocab_size, request.param
    models = tmp_path_factory.mktemp("models")
    try:
        yield tuple(  # type: ignore[misc]
            write_qwen_bmodel(models / f"qwen2-b{b}.bmodel", Variant(quant, lm_head_topk=topk), vocab, batch=b)
            for b in (1, 4)
        )
    finally:
        sys.path.remove(str(site))


def answers(bmodel: Path, prompts: list[list[int]], slots: int) -> tuple[list[list[int]], object]:
    """All prompts submitted at once to a scheduler over a fresh engine, stepped by hand."""
    from edgechat.engines.sail import load_sail

    _, engine = load_sail(bmodel, sail.read_bmodel(bmodel).vocab, [0], slots)
    scheduler = Scheduler(engine, start=False)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    handles = [scheduler.submit(p, sampling, frozenset()) for p in prompts]
    events: list[list] = [[] for _ in prompts]
    try:
        for _ in range(200):
            if all(ev and isinstance(ev[-1], Finished) for ev in events):
                break
            scheduler.step()
            for ev, h in zip(events, handles, strict=True):
                ev += h.poll()
        assert all(isinstance(ev[-1], Finished) for ev in events), [ev[-1:] for ev in events]
        return [[e.id for e in ev if isinstance(e, Token)] for ev in events], engine._net
    finally:
        scheduler.close()
        engine.close()


@pytest.mark.parametrize("running", [1, 2, 3, 4])
def test_batch_4_answers_as_batch_1_and_the_reference(bmodels: tuple[Path, Path], running: int) -> None:
    one, four = bmodels
    prompts = PROMPTS[:running]
    ref = QwenReference(one)
    expected = [ref.generate(p, NEW, frozenset()) for p in prompts]
    got, net = answers(four, prompts, 4)
    assert got == expected
    assert answers(one, prompts, 4)[0] == expected
    # one block_cache_0 call per step for all running answers: at most NEW - 1 steps (the first
    # token of each comes from its prefill), not one per answer and step
    assert net.calls["block_cache"] // 2 <= NEW - 1 + running, net.calls
    assert net.calls["block"] // 2 == running  # prefill one request at a time


def test_a_batch_bmodel_reports_its_batch_and_whole_batches_of_slots(bmodels: tuple[Path, Path]) -> None:
    from edgechat.engines.sail import load_sail

    _, engine = load_sail(bmodels[1], sail.read_bmodel(bmodels[1]).vocab, [0], 5)
    try:
        assert engine.max_batch == 4 and engine.max_sequences == 8  # two batches of K/V
        assert engine.device_bytes_needed >= 8 * engine.kv_bytes_per_slot
    finally:
        engine.close()


def test_batch_4_with_history_kv_keeps_parks_and_restores_each_row(tmp_path: Path, bmodels: tuple[Path, Path]) -> None:
    """Six sessions on one batch of four rows (history K/V): follow-ups feed only new tokens from
    their row, caches parked to host RAM come back into another row, answers stay the reference's."""
    from edgechat.engines.sail import load_sail

    spec = sail.read_bmodel(bmodels[0])
    path = sail.write_bmodel(tmp_path / "qwen2-b4-history.bmodel", **{**spec.__dict__, "batch": 4, "history_kv": True})
    ref = QwenReference(path)
    _, engine = load_sail(path, spec.vocab, [0], 4)
    scheduler = Scheduler(engine, start=False)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=6)
    history = {f"s{i}": [5 + i, 6, 7] for i in range(6)}
    reused: dict[str, int] = {}
    try:
        assert engine.prefix_cache and engine.max_batch == 4
        for turn in range(2):
            handles = {}
            for name, tokens in history.items():
                prompt = tokens + [30 + turn, 31]
                handles[name] = (prompt, scheduler.submit(prompt, sampling, frozenset(), cache_key=name))
            events = {name: [] for name in handles}
            for _ in range(300):
                if all(ev and isinstance(ev[-1], Finished) for ev in events.values()):
                    break
                scheduler.step()
                for name, (_, h) in handles.items():
                    events[name] += h.poll()
            for name, (prompt, h) in handles.items():
                answer = [e.id for e in events[name] if isinstance(e, Token)]
                assert answer == ref.generate(prompt, 6, frozenset()), (name, turn)
                if turn:
                    reused[name] = h.stats.reused_tokens
                history[name] = prompt + answer
        stats = scheduler.stats()
        assert stats.scheduler.turns_restored > 0, (stats, reused)  # parked rows came back into other rows
        assert sum(v > 0 for v in reused.values()) == stats.scheduler.turns_reused + stats.scheduler.turns_restored, (
            stats,
            reused,
        )
    finally:
        scheduler.close()
        engine.close()
