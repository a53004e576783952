"""The emulator's LLM-TPU graphs are as strict as bmrt: half-type tensors only as 16-bit patterns,
static graphs only on their compiled shapes, dynamic ones (block_kv_i) only on shapes that agree
on T new and P history rows, and `get_is_dynamic` only where sail >= 3.9 has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.sail.harness import sail
from tests.sail.qwen_harness import Variant, write_qwen_bmodel


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sail.EngineLLM:
    monkeypatch.setenv("SAIL_EMULATOR_API", "3.9")
    path = write_qwen_bmodel(tmp_path / "q.bmodel", Variant("int8", True), 300, history_kv=True, max_len=16)
    return sail.EngineLLM(str(path), [0])


def tensors(shapes: list[tuple[list[int], str]]) -> dict[int, sail.Tensor]:
    handle = sail.Handle(0)
    return {i: sail.Tensor(handle, shape, sail.Dtype[dtype], False, True) for i, (shape, dtype) in enumerate(shapes)}


def kv_call(t: int, p: int, mask: list[int] | None = None) -> tuple[dict, dict]:
    half, i32 = "BM_FLOAT16", "BM_INT32"
    ins = tensors([([1, t, 32], half), ([1, t], i32), (mask or [1, 1, t, p + t], half), ([1, p, 2, 8], half),
                   ([1, p, 2, 8], half)])  # fmt: skip
    outs = tensors([([1, t, 32], half), ([1, t, 2, 8], half), ([1, t, 2, 8], half)])
    return ins, outs


def test_the_graphs_are_the_llm_tpu_layout(net: sail.EngineLLM) -> None:
    assert net.get_input_shape("block_kv_0", 2, 0) == [1, 1, 16, 32] and net.get_input_num("block_kv_0") == 5
    assert net.get_input_dtype("block_0", 2).name == "BM_FLOAT16"  # the mask in the half type
    assert net.get_input_dtype("block_0", 1).name == "BM_INT32"
    assert net.get_output_shape("block_cache_0", 1, 0) == [1, 1, 2, 8]  # 2 K/V heads for 4 query heads
    assert net.get_is_dynamic("block_kv_0") and net.get_is_dynamic("block_0")
    assert not net.get_is_dynamic("block_cache_0")


def test_dynamic_graphs_take_agreeing_run_time_shapes_only(net: sail.EngineLLM) -> None:
    ins, outs = kv_call(t=3, p=5)
    assert net.process("block_kv_0", ins, outs) is None and net.fed["block_kv"] == 3
    bad_ins, bad_outs = kv_call(t=3, p=5, mask=[1, 1, 3, 3])
    with pytest.raises(sail.SailEngineError, match="disagree on T=3, P=5"):
        net.process("block_kv_0", bad_ins, bad_outs)
    too_big, outs = kv_call(t=17, p=1)
    with pytest.raises(sail.SailEngineError, match="bmrt_launch_tensor_ex|not"):
        net.process("block_kv_0", too_big, outs)


def test_static_graphs_take_their_compiled_shapes_only(net: sail.EngineLLM) -> None:
    half = "BM_FLOAT16"
    ins = tensors([([1, 1, 32], half), ([1, 1], "BM_INT32"), ([1, 1, 1, 8], half), ([1, 16, 2, 8], half),
                   ([1, 16, 2, 8], half)])  # fmt: skip
    outs = tensors([([1, 1, 32], half), ([1, 1, 2, 8], half), ([1, 1, 2, 8], half)])
    with pytest.raises(sail.SailEngineError, match="attention_mask is \\[1, 1, 1, 8\\], not \\[1, 1, 1, 17\\]"):
        net.process("block_cache_0", ins, outs)


def test_sail_3_8_cannot_say_a_graph_is_dynamic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_EMULATOR_API", "3.8")
    path = write_qwen_bmodel(tmp_path / "q.bmodel", Variant("int8", True), 300, history_kv=True, max_len=16)
    assert not hasattr(sail.EngineLLM(str(path), [0]), "get_is_dynamic")


def test_a_sample_head_gives_top_k_candidates_with_their_probabilities(tmp_path: Path, mode_39: None) -> None:
    path = write_qwen_bmodel(tmp_path / "s.bmodel", Variant("int8", False), 300, "sample_head", max_len=16)
    net = sail.EngineLLM(str(path), [0])
    f32, i32 = "BM_FLOAT32", "BM_INT32"
    ins = tensors([([1, 300], f32), ([1, 16], i32), ([1], f32), ([1], f32), ([1], i32), ([1], f32)])
    outs = tensors([([1, 50], f32), ([1, 50], i32)])
    logits = np.linspace(-3, 3, 300, dtype=np.float32).reshape(1, 300)
    for i, value in enumerate([logits, np.full((1, 16), 299, np.int32), [1.0], [1.0], [3], [1.0]]):
        ins[i].update_data(np.asarray(value, dtype=ins[i].asnumpy().dtype).reshape(ins[i].shape()))
    net.process("sample_head", ins, outs)
    probs, ids = outs[0].asnumpy()[0], outs[1].asnumpy()[0]
    assert ids[:3].tolist() == [299, 298, 297] and np.isclose(probs.sum(), 1.0) and probs[3:].max() < 1e-6


@pytest.fixture
def mode_39(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_EMULATOR_API", "3.9")
