"""History K/V bmodels (`--use_history_kv`: dynamic `block_i` + `block_kv_i`) on the sail emulator:
a follow-up turn feeds only its new tokens (counted by the emulator), a session's cache is kept
while resident, parked to host RAM when another session needs its slot and restored on its next
turn, and every answer still equals the numpy reference token for token."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgechat.runtime import Runtime
from tests.sail.harness import GREEDY_24, Mode, chat, open_runtime, sail
from tests.sail.qwen_harness import QwenReference, Variant, write_qwen_bmodel, write_token_config

QUESTIONS = ["What is a TPU?", "And a KV cache?", "Summarize both in one line."]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_config(tmp_path_factory.mktemp("qwen") / "config")


def install(tmp_path_factory: pytest.TempPathFactory, version: str) -> Mode:
    """One distribution name for both versions: the first `sophon` on the path is the wheel."""
    site = tmp_path_factory.mktemp("site")
    sail.install_as(site, version, "sophon")
    return Mode("sophon", version, "-", site)


@pytest.fixture(scope="module", params=["int8", "int4"])
def history_bmodel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cfg: Path
) -> Iterator[Path]:
    mode = install(tmp_path_factory, "3.9.4")
    sys.path.insert(0, str(mode.site))
    from edgechat.tokenizers.hf import HfTokenizer

    variant = Variant(request.param, lm_head_topk=True)
    path = tmp_path_factory.mktemp("models") / f"qwen2-history-{request.param}.bmodel"
    try:
        yield write_qwen_bmodel(path, variant, HfTokenizer(cfg).vocab_size, history_kv=True)
    finally:
        sys.path.remove(str(mode.site))


@pytest.fixture(scope="module")
def history_runtime(history_bmodel: Path, cfg: Path) -> Iterator[Runtime]:
    rt = open_runtime(history_bmodel, cfg, "--max-running", "2", "--max-prompt-share", "0.9")
    yield rt
    rt.close()


def test_a_follow_up_turn_feeds_only_its_new_tokens(history_runtime: Runtime, history_bmodel: Path) -> None:
    engine = history_runtime.backend.scheduler.engine  # type: ignore[attr-defined]
    assert engine.prefix_cache and history_runtime.info["backend"] == "sail"
    net, ref, stop = engine._net, QwenReference(history_bmodel), history_runtime.tokenizer.stop_ids
    before = net.fed.copy()
    turns = chat(history_runtime, QUESTIONS)
    rows = net.fed - before
    for t in turns:
        assert t.answer == ref.generate(t.prompt, GREEDY_24.max_new_tokens, stop), t.prompt
    first, later = turns[0], turns[1:]
    assert first.stats.reused_tokens == 0
    # at least the previous turn's whole prompt is reused (its answer too, as far as the template
    # re-tokenizes it to the ids that were generated)
    for previous, turn in zip(turns, later, strict=False):
        assert turn.stats.reused_tokens >= len(previous.prompt), turn.stats
    new_tokens = sum(len(t.prompt) - t.stats.reused_tokens for t in turns)
    assert rows["block"] + rows["block_kv"] == new_tokens  # the TPU computed exactly the new rows
    assert rows["block"] == len(first.prompt) and rows["block_kv"] == new_tokens - len(first.prompt)


def test_parked_and_restored_sessions_answer_as_alone(history_runtime: Runtime, history_bmodel: Path) -> None:
    """Three sessions on two slots: each turn of one evicts another's cache to host RAM; its next
    turn restores it and still feeds only what is new."""
    engine = history_runtime.backend.scheduler.engine  # type: ignore[attr-defined]
    ref, stop = QwenReference(history_bmodel), history_runtime.tokenizer.stop_ids
    calls = {"save": 0, "restore": 0}
    real_save, real_restore = engine.save, engine.restore

    def counted(name: str, real):  # noqa: ANN001, ANN202 — a thin wrapper
        def wrapper(*args):  # noqa: ANN002, ANN202
            calls[name] += 1
            return real(*args)

        return wrapper

    engine.save, engine.restore = counted("save", real_save), counted("restore", real_restore)
    results: dict[int, list] = {}
    gate = threading.Barrier(3, timeout=120)  # a person who never comes breaks it: the test fails, not hangs

    def run(person: int) -> None:
        gate.wait()
        results[person] = chat(history_runtime, [f"Person {person}: what is a TPU?", "And a KV cache?", "Thanks!"])

    try:
        threads = [threading.Thread(target=run, args=(p,)) for p in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        del engine.save, engine.restore
    assert sorted(results) == [0, 1, 2]
    for turns in results.values():
        for t in turns:
            assert t.answer == ref.generate(t.prompt, GREEDY_24.max_new_tokens, stop), t.prompt
        assert all(t.stats.reused_tokens > 0 for t in turns[1:])
    assert calls["save"] > 0 and calls["restore"] > 0, calls


def test_without_a_dynamic_wheel_the_prompt_is_re_read(
    tmp_path_factory: pytest.TempPathFactory, cfg: Path, history_bmodel: Path
) -> None:
    """sail 3.8 cannot say a graph is dynamic: block_kv_i is left alone and every turn re-reads
    the chat through the static path, with the same answers."""
    mode = install(tmp_path_factory, "3.8.0")
    sys.path.insert(0, str(mode.site))
    try:
        rt = open_runtime(history_bmodel, cfg)
        try:
            engine = rt.backend.scheduler.engine  # type: ignore[attr-defined]
            assert not engine.prefix_cache
            turns = chat(rt, QUESTIONS[:2])
            ref = QwenReference(history_bmodel)
            assert all(
                t.answer == ref.generate(t.prompt, GREEDY_24.max_new_tokens, rt.tokenizer.stop_ids) for t in turns
            )
            assert turns[1].stats.reused_tokens == 0 and engine._net.calls["block_kv"] == 0
        finally:
            rt.close()
    finally:
        sys.path.remove(str(mode.site))


def test_a_dynamic_bmodel_without_history_prefills_only_the_prompt(
    tmp_path_factory: pytest.TempPathFactory, cfg: Path
) -> None:
    """`llm_convert.py --dynamic` without history K/V: every turn re-reads the chat, but block_i
    computes the prompt's rows only, not the whole context."""
    mode = install(tmp_path_factory, "3.9.4")
    sys.path.insert(0, str(mode.site))
    try:
        from edgechat.tokenizers.hf import HfTokenizer

        path = tmp_path_factory.mktemp("models") / "qwen2-dynamic.bmodel"
        bmodel = write_qwen_bmodel(path, Variant("int8", lm_head_topk=True), HfTokenizer(cfg).vocab_size, dynamic=True)
        rt = open_runtime(bmodel, cfg)
        try:
            engine = rt.backend.scheduler.engine  # type: ignore[attr-defined]
            assert not engine.prefix_cache
            turns = chat(rt, QUESTIONS[:2])
            ref = QwenReference(bmodel)
            assert all(
                t.answer == ref.generate(t.prompt, GREEDY_24.max_new_tokens, rt.tokenizer.stop_ids) for t in turns
            )
            assert engine._net.fed["block"] == sum(len(t.prompt) for t in turns)
            assert turns[1].stats.reused_tokens == 0
        finally:
            rt.close()
    finally:
        sys.path.remove(str(mode.site))
