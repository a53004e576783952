"""TPU memory: the K/V of `--max-running` slots is checked against the TPU's free memory before it
is allocated and verified after (sail only logs a failed allocation); a shortfall is one line and
exit code 2, never a half-allocated engine."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest

from edgechat.engines.sail import MIB, SPARE_MIB
from tests.sail.harness import REPO, Mode, cli, load_error, open_runtime, sail

# K/V of 2 x 2 x 512 x 512 x 2 bytes = 2 MiB a slot; the loaded bmodel takes 64 MiB of the TPU
GEOMETRY = {"layers": 2, "hidden": 512, "heads": 4, "intermediate": 64, "max_len": 512, "vocab": 1000}


@pytest.fixture(scope="module")
def wide(mode: Mode, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wide") / "baichuan2-wide.bmodel"
    return sail.write_bmodel(path, device_mib=64, quant=mode.quant, **GEOMETRY)


def leave_free(monkeypatch: pytest.MonkeyPatch, mib: int) -> int:
    """Size the emulated TPU so `mib` MiB are free beyond what this test process holds already
    (the page test's runtime, say); returns the free MiB the TPU reports."""
    gc.collect()
    used = sail.DEVICE_USED.get(0, 0)
    monkeypatch.setenv("SAIL_EMULATOR_DEVICE_MEM_MIB", str(-(-used // MIB) + mib))
    total, used_mib, _ = sail.get_dev_stat(0)
    return total - used_mib


def need_mib(slots: int) -> int:
    """What the engine asks for: K/V of the slots plus the scratch tensors (hidden states and the
    block mask in F32, 1 MiB each here, and a few small ones), plus the spare."""
    kv = slots * 2 * MIB
    scratch = 512 * 512 * 4 * 2 + 4 * (512 + 1 + 512 + 1 + 512 + 1 + 512 + 513) + 2 * 2 * 512
    return -(-(kv + scratch) // MIB) + SPARE_MIB


def test_a_shortfall_is_refused_before_anything_is_allocated(
    wide: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    free = leave_free(monkeypatch, 64 + 20) - 64  # what the loaded bmodel will leave
    tensors = sail.DEVICE["tensors"]
    message = load_error(wide, token_dir, "--max-running", "4")
    assert message.startswith(
        f"baichuan2-wide.bmodel needs {need_mib(4)} MiB of TPU memory for 4 KV slots (2 MiB each)"
    )
    assert f", {free} MiB free on TPU 0: lower --max-running" in message
    assert sail.DEVICE["tensors"] == tensors and "bm_malloc_device_type" not in capsys.readouterr().out

    leave_free(monkeypatch, 64 + need_mib(2))  # room for exactly 2
    rt = open_runtime(wide, token_dir, "--max-running", "2")
    try:
        assert rt.info["kv_slots"] == 2 and rt.info["tpu_memory_bytes"] <= (need_mib(2) - SPARE_MIB) * MIB
    finally:
        rt.close()
    assert sail.DEVICE["tensors"] == tensors


def test_an_allocation_that_fails_anyway_is_caught_and_undone(
    wide: Path, token_dir: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The free-memory figure can be stale (another process allocates in between); sail then only
    logs each failed allocation, so the engine checks what it got and frees it all."""
    leave_free(monkeypatch, 64 + 20)
    real = sail.get_dev_stat
    monkeypatch.setattr(sail, "get_dev_stat", lambda dev_id: [real(dev_id)[0] + 100, real(dev_id)[1], 0])
    tensors, used = sail.DEVICE["tensors"], real(0)[1]
    message = load_error(wide, token_dir, "--max-running", "12")  # 26 MiB in 20: fails part way
    assert f"sail could not allocate {need_mib(12)} MiB of TPU memory for 12 KV slots" in message
    assert "lower --max-running" in message
    assert "bm_malloc_device_type() err=-1" in capsys.readouterr().out  # sail's own log line
    assert sail.DEVICE["tensors"] == tensors and real(0)[1] == used  # nothing left half-allocated


def test_the_engine_takes_what_it_says(wide: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leave_free(monkeypatch, 1024)
    before = sail.DEVICE["bytes"]
    rt = open_runtime(wide, token_dir, "--max-running", "3")
    try:
        assert sail.DEVICE["bytes"] - before == rt.info["tpu_memory_bytes"]
        assert rt.info["kv_bytes_per_session"] == 2 * MIB
    finally:
        rt.close()


def test_the_terminal_exits_2_with_one_line(wide: Path, token_dir: Path, mode: Mode) -> None:
    out = cli(
        mode, "--bmodel", str(wide), "--token", str(token_dir), "--max-running", "4", "--prompt", "hi",
        SAIL_EMULATOR_DEVICE_MEM_MIB=str(64 + 20),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "needs" in out.stderr and "lower --max-running" in out.stderr


def test_readme_memory_table_is_the_engines(tmp_path: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baichuan2-7B's geometry (32 layers, hidden 4096, 32 heads, MAX_LEN 512): README's table of
    TPU memory per --max-running is what the engine asks for."""
    leave_free(monkeypatch, 4096)
    path = sail.write_bmodel(
        tmp_path / "baichuan2-7b.bmodel", layers=32, hidden=4096, heads=32, intermediate=64, max_len=512,
        vocab=1000, device_mib=1,
    )  # fmt: skip
    readme = (REPO / "README.md").read_text()
    for slots in (1, 2, 4, 8):
        rt = open_runtime(path, token_dir, "--max-running", str(slots))
        try:
            kv = slots * rt.info["kv_bytes_per_session"] // MIB
            need = -(-rt.info["tpu_memory_bytes"] // MIB) + SPARE_MIB
        finally:
            rt.close()
        row = f"| {slots} | {kv} MiB | {need} MiB |"
        assert re.search(re.escape(row), readme), f"README's TPU memory table lacks {row!r}"
