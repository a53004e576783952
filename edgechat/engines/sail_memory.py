"""TPU memory for the sail engine's tensors: whether sail really allocated them, and the one line
that says what is missing. sail logs a failed device allocation and returns a tensor without
memory (sophgo/sophon-sail `src/tensor.cpp`), so every allocation is verified."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgechat.engines.sail_api import device_memory_mib

log = logging.getLogger(__name__)
MIB = 1 << 20


def allocated(sail: Any, dev: int, tensors: list[Any], before: tuple[int, int] | None, need_bytes: int) -> bool:
    """Check every tensor where the wheel can tell (`is_dev_data_valid`, >= 3.9), else that the
    TPU's used memory grew by what was asked (to get_dev_stat's MiB rounding)."""
    if tensors and getattr(tensors[0], "is_dev_data_valid", None) is not None:
        return all(t.is_dev_data_valid() for t in tensors)
    after = device_memory_mib(sail, dev)
    if before is None or after is None:
        log.warning("this sophon-sail cannot report TPU memory: the KV allocation is not verified")
        return True
    return after[1] - before[1] >= need_bytes // MIB - 1


def shortfall(engine: Any, need_mib: int, free: int | str, after: tuple[int, int] | None = None) -> str:
    slots = engine.max_sequences
    what = f"{need_mib} MiB of TPU memory for {slots} KV slot{'s' if slots != 1 else ''}"
    what += f" ({engine.kv_bytes_per_slot / MIB:.0f} MiB each)"
    name, dev = Path(engine.model_path).name, engine.dev_ids[0]
    advice = "lower --max-running (or give the TPU more memory, README 'SoC memory')"
    if after is None:
        return f"{name} needs {what}, {free} MiB free on TPU {dev}: {advice}"
    return f"{name}: sail could not allocate {what} on TPU {dev} (it reported {free} MiB free): {advice}"


def target(handle: Any) -> str:
    """The chip name (BM1684X); older sail builds lack Handle.get_target."""
    get_target = getattr(handle, "get_target", None)
    return str(get_target()) if get_target is not None else "Sophgo"
