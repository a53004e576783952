"""The thin adapter between the sail engine and the two generations of sophon-sail's EngineLLM.

sophon-sail 3.8.0 (the wheel sophon-demo's Baichuan2 sample pins; its source is not public) keys
graph tensors by name, as the sample calls it: `get_input_names(graph)`,
`get_input_shape(graph, name)`, `get_input_dtype(graph, name)` and
`process(graph, {(name, 0): Tensor}, {(name, 0): Tensor})`.
sophon-sail >= 3.9 (sophgo/sophon-sail `pyis/_engine_llm.pyi`, `src/bind.cpp`) keys them by
index only: `get_input_num(graph)`, `get_input_name(graph, i)`, `get_input_shape(graph, i, stage)`,
`get_input_dtype(graph, i)`, `get_input_tensor_devid(graph, i)` and
`process(graph, {i: Tensor}, {i: Tensor}, core_list=[0])`.

Which one is installed comes from the wheel's metadata (distribution `sophon` on x86 PCIe,
`sophon_arm` on SoC, ... as sophgo/sophon-sail `python/setup.py` names them); a build from source
put on PYTHONPATH has none, and then one call tells them apart: `get_input_shape(graph, 0, 0)`
is a TypeError on the name-keyed API.

Dtypes: `Tensor.update_data` binds float32/int8/uint8/int32/uint16 arrays only and `asnumpy()`
returns F16/BF16 tensors as uint16 bit patterns (sophgo/sophon-sail `src/bind.cpp`,
`src/tensor.cpp`), so 16-bit floats cross as their uint16 views.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgechat.errors import ConfigError

DTYPE_SIZES = {
    "BM_FLOAT32": 4,
    "BM_FLOAT16": 2,
    "BM_BFLOAT16": 2,
    "BM_INT32": 4,
    "BM_UINT32": 4,
    "BM_INT16": 2,
    "BM_UINT16": 2,
    "BM_INT8": 1,
    "BM_UINT8": 1,
}
INSTALL_HINT = (
    "install Sophgo's sophon-sail wheel (3.8.0 as the sample pins, or >= 3.9) and libsophon "
    "(README, section 'Running on a Sophgo TPU (BM1684X)'), or use --backend llamacpp"
)
FLOATS = ("BM_FLOAT32", "BM_FLOAT16", "BM_BFLOAT16")
INTEGERS = ("BM_INT32", "BM_UINT32")


class ChipError(ConfigError):
    """A TPU that could not load the bmodel (the device, not the bmodel or the settings): with
    several --dev_ids only that chip is left out."""


@dataclass(frozen=True)
class SailRelease:
    """The installed sophon-sail: its distribution and version (None for a source build) and
    which API generation it speaks."""

    distribution: str | None
    version: str | None
    index_keyed: bool

    def describe(self) -> str:
        version = self.version or "version unknown (no wheel metadata)"
        where = f" ({self.distribution})" if self.distribution else ""
        return f"sophon-sail {version}{where}, {'index' if self.index_keyed else 'name'}-keyed API"


# sophgo/sophon-sail `python/setup.py`: the wheel's name depends on the platform it was built for
SAIL_DISTRIBUTIONS = ("sophon", "sophon_arm", "sophon_arm_pcie", "sophon_loongarch64", "sophon_sw64", "sophon_riscv64")


def installed_wheel() -> tuple[str | None, str | None]:
    """(distribution, version) of the sophon-sail wheel pip installed, if any. Looked up by its
    known names: asking importlib.metadata which distribution provides `sophon` reads every
    installed package's file list (a third of a second here)."""
    for name in SAIL_DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def detect_release(net: Any, probe_graph: str) -> SailRelease:
    dist, version = installed_wheel()
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if match:
        return SailRelease(dist, version, (int(match.group(1)), int(match.group(2))) >= (3, 9))
    try:
        net.get_input_shape(probe_graph, 0, 0)
    except TypeError:
        return SailRelease(dist, version, False)
    return SailRelease(dist, version, True)


@dataclass
class Io:
    """One graph input or output: name, static shape, dtype, the key `process()` wants for it,
    the TPU it lives on (None where sail does not say), and the device tensor bound to it."""

    name: str
    shape: list[int]
    dtype: Any
    key: Any
    devid: int | None = None
    tensor: Any = None

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * DTYPE_SIZES.get(self.dtype_name, 4)


class GraphApi:
    """Graph tensors and `process()` in the installed generation's form; the rest of the engine
    never sees the difference."""

    def __init__(self, net: Any, release: SailRelease) -> None:
        self.net = net
        self.index_keyed = release.index_keyed

    def io(self, graph: str) -> tuple[list[Io], list[Io]]:
        net = self.net
        if not self.index_keyed:
            ins = [self._named(graph, name, "input") for name in net.get_input_names(graph)]
            outs = [self._named(graph, name, "output") for name in net.get_output_names(graph)]
            return ins, outs
        ins = [self._indexed(graph, i, "input") for i in range(net.get_input_num(graph))]
        outs = [self._indexed(graph, i, "output") for i in range(net.get_output_num(graph))]
        return ins, outs

    def _named(self, graph: str, name: str, what: str) -> Io:
        shape = getattr(self.net, f"get_{what}_shape")(graph, name)
        return Io(name, list(shape), getattr(self.net, f"get_{what}_dtype")(graph, name), (name, 0))

    def _indexed(self, graph: str, i: int, what: str) -> Io:
        net = self.net
        devid = getattr(net, f"get_{what}_tensor_devid", None)  # where the wheel tells (>= 3.9)
        return Io(
            getattr(net, f"get_{what}_name")(graph, i),
            list(getattr(net, f"get_{what}_shape")(graph, i, 0)),
            getattr(net, f"get_{what}_dtype")(graph, i),
            i,
            None if devid is None else int(devid(graph, i)),
        )

    def process(self, graph: str, ins: dict[Any, Any], outs: dict[Any, Any]) -> None:
        if self.index_keyed:
            self.net.process(graph, ins, outs, core_list=[0])
        else:
            self.net.process(graph, ins, outs)


def dtype_name(dtype: Any) -> str:
    """ "BM_FLOAT16" from sail's pybind enum (`.name`) or its str ("Dtype.BM_FLOAT16")."""
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]


def to_device(values: np.ndarray, dtype: Any) -> np.ndarray:
    """The array `update_data` takes for a tensor of `dtype`: float32/int32 as they are, F16 and
    BF16 as uint16 bit patterns (BF16 rounded to nearest even, as F32 -> BF16 on the TPU)."""
    name = dtype_name(dtype)
    if name == "BM_FLOAT32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if name == "BM_INT32":
        return np.ascontiguousarray(values, dtype=np.int32)
    if name == "BM_UINT32":
        return np.ascontiguousarray(values, dtype=np.uint32)
    if name == "BM_FLOAT16":
        return np.ascontiguousarray(values, dtype=np.float16).view(np.uint16)
    if name == "BM_BFLOAT16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    raise ValueError(f"no host encoding for {name}")


# A masked position's additive value per mask dtype: -1000 in Baichuan2's F32 masks (the seed's);
# 0xF0E2 (F16) and 0xC61C (BF16) in LLM-TPU's 16-bit masks, the patterns Sophgo's pipelines write.
MASKED = {"BM_FLOAT32": -1000.0, "BM_FLOAT16": -10000.0, "BM_BFLOAT16": -9984.0}


def masked_value(dtype: Any) -> float:
    return MASKED[dtype_name(dtype)]


def first_line(err: BaseException) -> str:
    """pybind11's TypeErrors run over several lines; a one-line error takes the first."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def device_memory_mib(sail: Any, dev_id: int) -> tuple[int, int] | None:
    """(total, used) MiB of a TPU from `sail.get_dev_stat` (libsophon bm_get_stat: all heaps,
    MiB), or None where this sail cannot say."""
    get_dev_stat = getattr(sail, "get_dev_stat", None)
    if get_dev_stat is None:
        return None
    try:
        stat = get_dev_stat(dev_id)
        return int(stat[0]), int(stat[1])
    except Exception:  # noqa: BLE001 — a failed query means "unknown", not a reason to stop
        return None


def from_device(values: np.ndarray, dtype: Any) -> np.ndarray:
    """What `asnumpy()` returned, as float64 values: F16/BF16 arrive as uint16 bit patterns."""
    name = dtype_name(dtype)
    if name == "BM_FLOAT16":
        return values.view(np.float16).astype(np.float64)
    if name == "BM_BFLOAT16":
        return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(np.float64)


# ---- what load_sail checks before the wheel can end the process ----


def check_bmodel(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("the sail backend needs --bmodel PATH (scripts/download.sh fetches models/BM1684X/*.bmodel)")
    if not path.is_file():
        raise ConfigError(f"bmodel not found: {path} — run scripts/download.sh or pass --bmodel PATH")
    return path


def import_sail() -> Any:
    try:
        import sophon.sail as sail
    except ImportError as err:
        raise ConfigError(f"cannot import sophon.sail ({err}): {INSTALL_HINT}") from None
    return sail


def check_dev_ids(sail: Any, dev_ids: Sequence[int]) -> None:
    """sail.Handle ends the whole process on an unknown id, so check before creating one."""
    count = int(sail.get_available_tpu_num())
    bad = [d for d in dev_ids if not 0 <= d < count]
    if not dev_ids or bad:
        have = f"TPU ids 0..{count - 1}" if count else "no TPU"
        wanted = " ".join(map(str, dev_ids))
        raise ConfigError(
            f"--dev_ids {wanted}: no TPU {bad[0] if bad else ''} here; this machine has {have} (see bm-smi)"
        )
