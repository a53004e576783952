"""TEST DOUBLE, device side: emulated TPU memory, sail's fatal exits, 16-bit codecs, versions.

Facts mirrored, read from sophgo/sophon-sail (tags 3.9.0 = commit 4c81a29, 3.9.4, 3.10.7):
- `src/tensor.cpp` Tensor_CC constructor: a failed `bm_malloc_device_byte_heap_mask` only logs
  `bm_malloc_device_type() err=..., size=...` and carries on with an empty device memory; the
  "exit(SAIL_ERR_TENSOR_INIT)" there is commented out. Later use of that tensor fails then.
- `src/tensor.cpp` (3.9.0): `update_data` exits the process on a shape/ndim mismatch
  (`exit(SAIL_ERR_TENSOR_SHAPE)`) and when the data is larger than the tensor
  (`exit(SAIL_ERR_TENSOR_SIZE)`); `sync_d2d` exits on a dtype mismatch, a tensor without device
  memory or an out-of-range copy; `asnumpy` exits on a tensor without device memory. 3.10 turned
  several of these into exceptions; the emulator keeps the harsher 3.9.0 behaviour.
- `include/tensor.h` `sail_status_t`: the exit codes below (the process status is code & 0xff).
- `src/tensor.cpp` `get_dev_stat` and libsophon's `bm_get_stat`: [mem_total, mem_used, tpu_util]
  with memory in MiB (`total_size >> 20`).
- `python/setup.py`: the wheel's distribution is `sophon` (x86 PCIe) or `sophon_arm` (SoC), ...,
  versioned from the repository's `git_version`.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

TPU_NUM_ENV = "SAIL_EMULATOR_TPU_NUM"  # devices present (default 1)
MEMORY_ENV = "SAIL_EMULATOR_DEVICE_MEM_MIB"  # memory of each emulated TPU in MiB (default 4096)
BROKEN_ENV = "SAIL_EMULATOR_BROKEN_TPUS"  # ids of TPUs that fail to load a bmodel ("1" or "1 2")
API_ENV = "SAIL_EMULATOR_API"  # API generation when no dist-info says it ("3.8" or "3.9", default 3.9)
DEFAULT_MEMORY_MIB = 4096
DISTRIBUTIONS = ("sophon", "sophon_arm", "sophon_arm_pcie", "sophon_loongarch64", "sophon_sw64", "sophon_riscv64")

SAIL_ERR_DEV_INIT = 1002
SAIL_ERR_TENSOR_EMPTY = 2003
SAIL_ERR_TENSOR_SHAPE = 2004
SAIL_ERR_TENSOR_DTYPE = 2005
SAIL_ERR_TENSOR_SIZE = 2006
SAIL_ERR_TENSOR_PARAM = 2007
SAIL_ERR_TENSOR_DEVMEM = 2009
SEGFAULT = 139  # what a shell reports for a process killed by SIGSEGV

USED: dict[int, int] = {}  # device id -> bytes allocated on it (bmodel coefficients + tensors)
DEVICE: dict[str, int] = {"tensors": 0, "bytes": 0}  # live device tensors, for release tests
DEAD: set[int] = set()  # TPUs that stopped answering (`kill`): their graphs and stat queries fail


def log_error(message: str) -> None:
    """spdlog's default logger writes to stdout; sail logs and, at these call sites, carries on."""
    print(f"[sail emulator] [error] {message}", flush=True)


def fatal(message: str, code: int) -> NoReturn:
    """What sail does at its `exit(...)` call sites: the log line, then the whole process ends."""
    log_error(message)
    sys.stderr.flush()
    os._exit(code & 0xFF)


def tpu_num() -> int:
    return int(os.environ.get(TPU_NUM_ENV, "1"))


def broken(dev_id: int) -> bool:
    """A TPU listed in $SAIL_EMULATOR_BROKEN_TPUS: present (bm-smi lists it) but loading a bmodel
    on it fails, as on a card whose firmware or memory is bad."""
    return str(dev_id) in os.environ.get(BROKEN_ENV, "").replace(",", " ").split()


def kill(dev_id: int) -> None:
    """Emulator-only: TPU `dev_id` stops answering now (a chip that died under load). Its
    `process` calls raise SailEngineError as bmrt_launch_tensor_ex fails and `get_dev_stat` raises
    SailDeviceError; the other TPUs go on. `revive` undoes it (tests)."""
    DEAD.add(dev_id)


def revive(dev_id: int) -> None:
    DEAD.discard(dev_id)


def total_bytes(dev_id: int) -> int:
    return int(os.environ.get(MEMORY_ENV, str(DEFAULT_MEMORY_MIB))) << 20


def reserve(dev_id: int, nbytes: int) -> bool:
    """Take `nbytes` of device memory; False when the device does not have them free."""
    used = USED.get(dev_id, 0)
    if used + nbytes > total_bytes(dev_id):
        return False
    USED[dev_id] = used + nbytes
    return True


def release(dev_id: int, nbytes: int) -> None:
    USED[dev_id] = USED.get(dev_id, 0) - nbytes


# ---- 16-bit floats travel as uint16 bit patterns, as sail's asnumpy returns them ----


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns, round to nearest even (how a TPU narrows F32 to BF16)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


# ---- which sophon-sail this emulator is: the version of the distribution it is installed as ----


def install_as(directory: str | Path, version: str, dist: str = "sophon") -> Path:
    """Write `<dist>-<version>.dist-info` into `directory` (put `directory` on sys.path/PYTHONPATH):
    importlib.metadata then finds the emulated `sophon` package as that wheel, and the emulator
    behaves as that sail version. Emulator-only; the real wheel gets this from pip."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"sophon-sail's wheels are named {', '.join(DISTRIBUTIONS)}, not {dist!r}")
    info = Path(directory) / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        "Summary: TEST DOUBLE of Sophgo's sophon-sail (edgechat tests/sail_emulator), not the real wheel\n"
    )
    (info / "top_level.txt").write_text("sophon\n")
    return info


def installed_version() -> str | None:
    """The version of the sophon-sail distribution this package is installed as, if any."""
    for dist in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def api_generation() -> tuple[int, int]:
    """(3, 8): name-keyed EngineLLM, as the seed calls it; (3, 9): index-keyed, as sail >= 3.9."""
    text = installed_version() or os.environ.get(API_ENV, "3.9")
    match = re.match(r"(\d+)\.(\d+)", text)
    if not match:
        raise RuntimeError(f"sail emulator: cannot read an API version from {text!r}")
    return (3, 8) if (int(match.group(1)), int(match.group(2))) < (3, 9) else (3, 9)
