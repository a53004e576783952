"""The sail backend on the sophon.sail emulator (a test double, tests/sail_emulator), in each of
the four emulated installs: sail 3.8 (name-keyed) / 3.9 (index-keyed) x int8 (F16 K/V) / int4
(BF16 K/V) bmodel.

Greedy answers through client + scheduler + SailEngine + emulated graphs must equal a cache-free
reference forward of the same weights, written independently of the emulator's graph split.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgechat.types import FinishReason, SamplingParams
from tests.sail.harness import (
    GREEDY_24,
    MAX_LEN,
    Mode,
    Reference,
    chat,
    open_runtime,
    recording_backend,
    sail,
)

CHATS = [
    ["你好，请介绍一下你自己。", "用C++写一段冒泡排序算法。", "谢谢！再简短一点？"],
    ["What is a TPU?", "And a KV cache?", "Summarize both in one line.", "<reserved_106> is just text"],
    ["今天天气怎么样？", "明天呢？"],
]


def test_greedy_chats_match_a_cache_free_reference(runtime: Any, bmodel: Path) -> None:
    ref = Reference(bmodel)
    stop = runtime.tokenizer.stop_ids
    net = runtime.backend.scheduler.engine._net
    trimmed = 0
    for questions in CHATS:
        before = net.calls.copy()
        turns = chat(runtime, questions)
        trimmed += sum(t.stats.trimmed_messages for t in turns)
        for turn in turns:
            prompt = turn.prompt
            assert prompt[-1] == 196 and prompt.count(195) == prompt.count(196) and 2 not in prompt  # no fake turns
            assert len(prompt) <= MAX_LEN // 2  # the sample's answer room: history trimmed to half the context
            assert turn.answer == ref.generate(prompt, GREEDY_24.max_new_tokens, stop), prompt
        calls = net.calls - before
        decoded = sum(len(t.answer) - 1 for t in turns)
        assert calls["block"] == 2 * len(turns)  # one whole-prompt pass per turn and layer
        assert calls["block_cache"] == 2 * decoded  # then one cached step per token and layer
    assert sum(len(t.answer) for t in turns) > 20, "the emulated model should talk, not stop at once"
    assert trimmed, "a long chat should have had its oldest turns dropped"


def test_a_chat_that_fills_the_context_ends_with_length(
    runtime: Any, bmodel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal's conversation: the answer runs to the end of the context, and says so."""
    from baichuan2 import follow
    from edgechat.clients import client_for
    from edgechat.conversation import Conversation

    long = SamplingParams(temperature=0.0, max_new_tokens=4 * MAX_LEN)
    backend, recorder = recording_backend(runtime)
    conversation = Conversation(client_for(replace(runtime, backend=backend), sampling=long), sampling=long)
    assert conversation.ask("Write a very long story about edge AI boxes.") is None
    assert follow(conversation)
    stats = conversation.client.last_stats
    assert len(recorder.prompt) + len(recorder.tokens) == MAX_LEN  # the answer ran to the end of the context
    assert stats.finish_reason is FinishReason.LENGTH
    assert "stopped at the length limit" in stats.summary()  # the page's stats line
    assert f"(the answer stopped: the context of {MAX_LEN} tokens is full)" in capsys.readouterr().err
    expected = Reference(bmodel).generate(recorder.prompt, long.max_new_tokens, runtime.tokenizer.stop_ids)
    assert recorder.tokens == expected


def test_interleaved_sessions_give_each_alone(runtime: Any) -> None:
    questions = {"a": ["讲一个关于猫的故事。", "再讲一个。"], "b": ["Tell me about sorting.", "Bubble sort?"]}
    alone = {name: [(t.prompt, t.answer) for t in chat(runtime, qs)] for name, qs in questions.items()}

    engine = runtime.backend.scheduler.engine
    order: list[int] = []
    real_decode = engine.decode
    engine.decode = lambda batch: order.extend(seq for seq, _ in batch) or real_decode(batch)  # type: ignore[method-assign]
    together: dict[str, Any] = {}
    start = threading.Barrier(2, timeout=60)  # bounded like the joins below

    def run(name: str) -> None:
        start.wait()
        together[name] = [(t.prompt, t.answer) for t in chat(runtime, questions[name])]

    try:
        threads = [threading.Thread(target=run, args=(name,)) for name in questions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        del engine.decode
    assert together == alone
    switches = sum(1 for x, y in zip(order, order[1:], strict=False) if x != y)
    assert switches >= 10, f"the sessions did not interleave: {order}"


def test_kv_slots_follow_max_running_not_max_sessions(bmodel: Path, token_dir: Path, mode: Mode) -> None:
    baseline = sail.DEVICE["tensors"]
    rt = open_runtime(bmodel, token_dir, "--max-sessions", "6", "--max-running", "2")
    engine = rt.backend.scheduler.engine
    allocated = sail.DEVICE["tensors"]
    assert engine.max_sequences == 2 and rt.backend.scheduler.max_running == 2
    assert allocated - baseline == 2 * 2 * engine.num_layers + 12  # 2 slots' k/v per layer + scratch
    kv = {engine._slots[0].k[0].dtype().name, engine._slots[1].v[1].dtype().name}
    assert kv == {f"BM_{mode.kv_dtype}"}
    slot_k = [list(s.k) for s in engine._slots]
    for _ in range(2):
        chat(rt, ["第一个问题", "第二个问题"])
        chat(rt, ["another session"])
    assert sail.DEVICE["tensors"] == allocated
    assert [list(s.k) for s in engine._slots] == slot_k  # the very same device tensors

    rt.backend.scheduler.close()  # stop the scheduler thread: from here on this test owns the engine
    first, second = engine.open_sequence(), engine.open_sequence()
    with pytest.raises(RuntimeError, match="KV slots are in use"):
        engine.open_sequence()
    engine.release(first)
    assert engine.open_sequence() == first
    engine.release(first), engine.release(second)
    del slot_k
    engine.close()
    assert sail.DEVICE["tensors"] == baseline


def test_default_kv_slots_on_the_tpu(bmodel: Path, token_dir: Path) -> None:
    rt = open_runtime(bmodel, token_dir, "--max-sessions", "8")
    try:
        assert rt.backend.scheduler.engine.max_sequences == 2 and rt.info["kv_slots"] == 2
    finally:
        rt.close()


def test_describe_names_the_wheel_and_the_dtypes(runtime: Any, mode: Mode) -> None:
    info = runtime.info
    assert info["backend"] == "sail" and info["context_length"] == MAX_LEN and info["layers"] == 2
    assert "greedy" in info["sampling"]
    assert ("BM1684X" if mode.index_keyed else "Sophgo") in info["device"]  # 3.8: no Handle.get_target
    assert f"sophon-sail {mode.version} ({mode.dist})" in info["device"]
    assert ("index-keyed" if mode.index_keyed else "name-keyed") in info["device"]
    assert info["kv_dtype"] == mode.kv_dtype and f"K/V {mode.kv_dtype}" in info["device"]
    assert info["sail_version"] == mode.version
    assert info["template"] == "baichuan2" and info["model_name"] == "baichuan2-emulated"
    assert info["max_prompt_len"] == MAX_LEN // 2  # the seed's answer room by default
    # 2 layers x (k, v) x MAX_LEN x hidden 32, 2 bytes each (F16 and BF16 alike)
    assert info["kv_bytes_per_session"] == 2 * 2 * MAX_LEN * 32 * 2


def test_answer_room_follows_the_flag(bmodel: Path, token_dir: Path) -> None:
    rt = open_runtime(bmodel, token_dir, "--max-prompt-share", "0.75", "--max-running", "1")
    try:
        assert rt.backend.scheduler.engine.max_prompt_len == 96 and rt.info["max_prompt_len"] == 96
    finally:
        rt.close()
