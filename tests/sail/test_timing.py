"""The emulator's timing model (simulated time, never wall time): one stream through the real
scheduler and engine reproduces each published first-token time and tok/s it is calibrated on,
and a small room shows what the model is for: three chips and batch 4 serve more than one chip."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sail_room import CALIBRATION, simulate, single_stream, write_room_bmodel


@pytest.mark.parametrize("model", sorted(CALIBRATION))
def test_one_stream_reproduces_the_published_figures(model: str) -> None:
    ftl_s, tok_s = CALIBRATION[model]
    got = single_stream(model)
    assert got["ftl_s"] == pytest.approx(ftl_s, rel=0.05)
    assert got["tok_s"] == pytest.approx(tok_s, rel=0.05)


def test_more_chips_and_a_batch_serve_a_room_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_EMULATOR_TPU_NUM", "3")
    one = write_room_bmodel(tmp_path / "b1.bmodel", max_len=128)
    four = write_room_bmodel(tmp_path / "b4.bmodel", max_len=128, batch=4)
    room = {"people": 6, "turns": 2, "tokens": 24}
    single = simulate(one, [0], 2, **room)
    chips = simulate(one, [0, 1, 2], 2, **room)
    batch = simulate(four, [0], 4, **room)
    assert single["errors"] == chips["errors"] == batch["errors"] == 0
    assert chips["aggregate_tps"] > 2 * single["aggregate_tps"]
    assert batch["aggregate_tps"] > 1.5 * single["aggregate_tps"]
    assert chips["ftl_p95_s"] < single["ftl_p95_s"]
