"""The sophon.sail test double itself: as strict as the real wheel (sophgo/sophon-sail 3.9.0
`src/tensor.cpp`, `src/bind.cpp`, `pyis/_engine_llm.pyi`), never kinder. Paths that end the
process in sail end the emulated process too, so they are probed in a subprocess here; the other
sail tests prove edgechat never takes them (a fatal call would end the test run itself).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.sail.harness import EMULATOR, REPO, Mode, sail


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` after `from sophon import sail` in a fresh interpreter (no wheel metadata: API 3.9)."""
    script = "import numpy as np\nfrom sophon import sail\nh = sail.Handle(0)\n" + code
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{EMULATOR}:{REPO}", **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=60)


NET = "import os, tempfile\nnet = sail.EngineLLM(str(sail.write_bmodel(os.path.join(tempfile.mkdtemp(), 'm'))), [0])\n"
FATAL = {
    "update_data with another shape": (
        "t = sail.Tensor(h, [1, 4], sail.Dtype.BM_INT32, False, True)\nt.update_data(np.zeros((4,), np.int32))",
        2004,
        "Invalid tensor shape",
    ),
    "update_data with another dtype": (
        "t = sail.Tensor(h, [1, 4], sail.Dtype.BM_INT32, False, True)\nt.update_data(np.zeros((1, 4), np.float32))",
        2006,
        "into a BM_INT32 tensor",
    ),
    "sync_d2d between dtypes": (
        "a = sail.Tensor(h, [8], sail.Dtype.BM_FLOAT32, False, True)\n"
        "b = sail.Tensor(h, [8], sail.Dtype.BM_FLOAT16, False, True)\na.sync_d2d(b, 0, 0, 4)",
        2005,
        "Data types do not match",
    ),
    "sync_d2d out of range": (
        "a = sail.Tensor(h, [8], sail.Dtype.BM_FLOAT16, False, True)\n"
        "b = sail.Tensor(h, [8], sail.Dtype.BM_FLOAT16, False, True)\na.sync_d2d(b, 6, 0, 4)",
        2007,
        "out of bounds",
    ),
    "asnumpy of a tensor whose allocation failed": (
        "t = sail.Tensor(h, [64, 1024, 1024], sail.Dtype.BM_FLOAT32, False, True)\n"
        "print('allocated, valid:', t.is_dev_data_valid())\nt.asnumpy()",
        2003,
        "bm_malloc_device_type() err=-1, size=268435456",
    ),
    "a bad TPU id": ("sail.Handle(7)", 1002, "Invalid tpu id: 7"),
    "process without one of its inputs": (
        NET + "out = sail.Tensor(h, [1, 1, 32], sail.Dtype.BM_FLOAT32, False, True)\n"
        "net.process('embedding_cache', {}, {0: out})",
        139,
        "sail dereferences a null tensor",
    ),
    "process with a tensor of another dtype": (
        NET + "ids = sail.Tensor(h, [1, 1], sail.Dtype.BM_FLOAT32, False, True)\n"
        "out = sail.Tensor(h, [1, 1, 32], sail.Dtype.BM_FLOAT32, False, True)\n"
        "net.process('embedding_cache', {0: ids}, {0: out})",
        2005,
        "the graph reads BM_INT32",
    ),
}


@pytest.mark.parametrize("case", list(FATAL))
def test_fatal_calls_end_the_process_as_sail_does(case: str) -> None:
    code, status, message = FATAL[case]
    out = run(code + "\nprint('still alive')", SAIL_EMULATOR_DEVICE_MEM_MIB="128")
    assert out.returncode == status & 0xFF, (out.returncode, out.stdout, out.stderr)
    assert message in out.stdout and "still alive" not in out.stdout


def test_a_failed_allocation_only_logs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_EMULATOR_DEVICE_MEM_MIB", "64")
    handle = sail.Handle(0)
    used = sail.get_dev_stat(0)[1]
    tensor = sail.Tensor(handle, [32, 1024, 1024], sail.Dtype.BM_FLOAT32, False, True)  # 128 MiB
    assert "bm_malloc_device_type() err=-1, size=134217728" in capsys.readouterr().out
    assert not tensor.is_dev_data_valid() and sail.get_dev_stat(0)[1] == used
    tensor.update_data(np.zeros([32, 1024, 1024], np.float32))  # sail logs a failed copy and goes on
    assert "no device memory" in capsys.readouterr().out


def test_update_data_takes_only_the_dtypes_sail_binds() -> None:
    handle = sail.Handle(0)
    mask = sail.Tensor(handle, [1, 4], sail.Dtype.BM_FLOAT16, False, True)
    for wrong in (np.float16, np.float64, np.int64):
        with pytest.raises(TypeError, match="float32/int8/uint8/int32/uint16"):
            mask.update_data(np.zeros((1, 4), wrong))
    mask.update_data(np.array([[0.5, -1000, 0, 1]], np.float16).view(np.uint16))
    bits = mask.asnumpy()
    assert bits.dtype == np.uint16 and bits.view(np.float16).tolist() == [[0.5, -1000, 0, 1]]


def test_bf16_tensors_come_back_as_their_bit_patterns() -> None:
    handle = sail.Handle(0)
    kv = sail.Tensor(handle, [3], sail.Dtype.BM_BFLOAT16, False, True)
    kv.update_data(np.array([0x3F80, 0xC000, 0x4049], np.uint16))  # 1.0, -2.0, 3.140625
    assert kv.asnumpy().dtype == np.uint16 and kv._values().tolist() == [1.0, -2.0, 3.140625]


def test_the_api_generation_is_the_installed_wheels(mode: Mode, bmodel: Path) -> None:
    net = sail.EngineLLM(str(bmodel), [0])
    if mode.index_keyed:
        assert net.get_input_num("block_0") == 3 and net.get_input_name("block_0", 2) == "attention_mask"
        assert net.get_input_shape("block_0", 0, 0)[1:] == [128, 32]
        assert net.get_output_dtype("block_0", 1).name == f"BM_{mode.kv_dtype}"
        assert net.get_input_tensor_devid("block_0", 1) == 0
        with pytest.raises(TypeError, match="incompatible function arguments"):
            net.get_input_shape("block_0", "input_states")
    else:
        assert net.get_input_shape("block_0", "input_states")[1:] == [128, 32]
        assert net.get_output_dtype("block_0", "past_k").name == f"BM_{mode.kv_dtype}"
        for missing in ("get_input_num", "get_input_name", "get_input_tensor_devid"):
            assert not hasattr(net, missing)
        with pytest.raises(TypeError, match="incompatible function arguments"):
            net.get_input_shape("block_0", 0, 0)
    assert net.get_input_dtype("block_0", 2 if mode.index_keyed else "attention_mask").name == "BM_FLOAT32"


def test_process_keys_follow_the_api_generation(mode: Mode, bmodel: Path) -> None:
    net = sail.EngineLLM(str(bmodel), [0])
    handle = sail.Handle(0)
    ids = sail.Tensor(handle, [1, 1], sail.Dtype.BM_INT32, False, True)
    embed = sail.Tensor(handle, [1, 1, 32], sail.Dtype.BM_FLOAT32, False, True)
    ids.update_data(np.array([[5]], np.int32))
    right, wrong = ({0: ids}, {0: embed}), ({("input_ids", 0): ids}, {("input_embed", 0): embed})
    if not mode.index_keyed:
        right, wrong = wrong, right
    assert net.process("embedding_cache", *right) is None
    assert embed.asnumpy().dtype == np.float32 and np.abs(embed.asnumpy()).sum() > 0
    with pytest.raises(TypeError, match="incompatible function arguments"):
        net.process("embedding_cache", *wrong)
