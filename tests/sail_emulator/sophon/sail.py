"""TEST DOUBLE of `sophon.sail` (Sophgo's TPU runtime): a numpy emulator, not a TPU driver.

It exists so edgechat's sail backend can be proven without a BM1684X, and it is meant to be as
strict as the real wheel, never kinder. It offers only what sophon-demo's Baichuan2 sample and
edgechat use: `Handle`, `Tensor`, `Dtype`, `EngineLLM`, `get_available_tpu_num`, `get_dev_stat`,
and runs the graphs of `_emu_model` (a tiny random Baichuan2-style model stored as JSON).

Which sail it is (selectable per test):
- API generation: the version of the distribution it is installed as (`install_as(dir, "3.8.0")`
  writes a `sophon-3.8.0.dist-info`; put `dir` on the path), else $SAIL_EMULATOR_API (default
  3.9), the case of a source build on PYTHONPATH.
  3.8 (the seed's wheel; its source is not public, so only what the seed calls exists):
  `get_input_names(g)`, `get_input_shape(g, name)`, `get_input_dtype(g, name)` (and output_*),
  `process(g, {(name, 0): Tensor}, {(name, 0): Tensor})`. No `get_input_num`, no
  `Tensor.is_dev_data_valid`, no `Handle.get_target`.
  >= 3.9 (sophgo/sophon-sail `pyis/_engine_llm.pyi`, `src/bind.cpp`): index-keyed
  `get_input_num(g)`, `get_input_name(g, i)`, `get_input_shape(g, i, stage=0)`,
  `get_input_dtype(g, i)`, `get_input_tensor_devid(g, i)` (and output_*), `get_input_names(g)`,
  `process(g, {i: Tensor}, {i: Tensor}, core_list=[0])` returning None (bound as void).
  A call in the other generation's form raises TypeError, as pybind11 does.
- dtypes: the bmodel's `quant` (int8: F16 K/V, int4: BF16 K/V; everything else F32/INT32).
- device memory: $SAIL_EMULATOR_DEVICE_MEM_MIB per TPU (default 4096); a loaded bmodel takes
  `ModelSpec.device_bytes()` of it.

Behaviour of the real wheel mirrored (see `_emu_device` for the source lines):
- `Handle(bad_id)` prints "Error: Invalid tpu id: N!" and ends the process (exit(SAIL_ERR_DEV_INIT)).
- `EngineLLM(path, dev_ids)` raises SailEngineError for an empty id list, a missing file, a file
  that is not a bmodel, an unknown device or too little device memory for the bmodel.
- `Tensor(handle, shape, dtype, False, True)` allocates device memory; when the device is full it
  only logs an error line and returns a tensor without device memory, as sail does. Using that
  tensor later ends the process (asnumpy, sync_d2d, process) or silently does nothing
  (update_data logs an error, as sail's bm_memcpy_s2d_partial failure does).
- `update_data(array)`: the array's dtype must be the tensor's storage dtype (float32 for F32,
  int32 for INT32, uint16 for F16/BF16 bit patterns: sail binds float32/int8/uint8/int32/uint16
  arrays only); another dtype raises TypeError (pybind11 would convert it and the result then
  depends on the sail version: never rely on it). A shape or ndim mismatch ends the process.
- `asnumpy()` returns the storage dtype: uint16 bit patterns for F16 and BF16 tensors.
- `sync_d2d(src, offset_src, offset_dst, len)` counts elements; a dtype mismatch, a tensor without
  device memory or an out-of-range copy ends the process.
- `process`: a missing input/output index would make sail dereference a null tensor: the process
  ends. A tensor whose shape differs from the static graph raises SailEngineError
  (bmrt_launch_tensor_ex fails); one whose dtype differs would be read as the graph's dtype
  (garbage): the process ends. A tensor may be both input and output (the seed runs the blocks
  in place). Multi-device bmodels are described, not run.
- Live device tensors are counted in `DEVICE`; memory returns when the last reference goes.
"""

from __future__ import annotations

import enum
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sophon import _emu_device as dev
from sophon._emu_device import DEVICE, install_as  # noqa: F401 — emulator-only helpers for tests
from sophon._emu_device import USED as DEVICE_USED  # noqa: F401 — bytes taken on each TPU, for tests
from sophon._emu_model import (  # noqa: F401 — emulator-only helpers for tests
    Graph,
    ModelSpec,
    Weights,
    decoder_layer,
    graphs,
    lm_head,
    model_weights,
    read_bmodel,
    write_bmodel,
)

MASKED = -1000.0


class SailDeviceError(Exception):  # pybind11 register_exception: subclasses of Exception
    pass


class SailTensorError(Exception):
    pass


class SailEngineError(Exception):
    pass


class Dtype(enum.Enum):
    BM_FLOAT32 = 0
    BM_FLOAT16 = 1
    BM_INT8 = 2
    BM_UINT8 = 3
    BM_INT16 = 4
    BM_UINT16 = 5
    BM_INT32 = 6
    BM_UINT32 = 7
    BM_BFLOAT16 = 8


_STORAGE = {
    Dtype.BM_FLOAT32: np.float32,
    Dtype.BM_FLOAT16: np.uint16,
    Dtype.BM_BFLOAT16: np.uint16,
    Dtype.BM_INT8: np.int8,
    Dtype.BM_UINT8: np.uint8,
    Dtype.BM_INT16: np.int16,
    Dtype.BM_UINT16: np.uint16,
    Dtype.BM_INT32: np.int32,
    Dtype.BM_UINT32: np.uint32,
}
_UPDATE_DATA_DTYPES = (np.float32, np.int8, np.uint8, np.int32, np.uint16)  # sail 3.9 bind.cpp


def _pybind_type_error(function: str, signature: str) -> TypeError:
    return TypeError(
        f"{function}(): incompatible function arguments. The following argument types are supported:\n"
        f"    1. {signature}"
    )


def _missing(owner: str, name: str) -> AttributeError:
    return AttributeError(f"'sophon.sail.{owner}' object has no attribute '{name}' (sail emulator in 3.8 mode)")


def get_available_tpu_num() -> int:
    return dev.tpu_num()


def get_dev_stat(dev_id: int) -> list[int]:
    """[mem_total MiB, mem_used MiB, tpu_util %] as sail's get_dev_stat."""
    if not 0 <= dev_id < dev.tpu_num():
        dev.log_error("bm_dev_request failed, ret=1")
        raise SailDeviceError("bm_dev_request failed")
    return [dev.total_bytes(dev_id) >> 20, dev.USED.get(dev_id, 0) >> 20, 0]


class Handle:
    def __init__(self, dev_id: int) -> None:
        if not 0 <= dev_id < dev.tpu_num():
            print(f"Error: Invalid tpu id: {dev_id}!", flush=True)  # src/tensor.cpp make_shaptr_bm_handle_t
            os._exit(dev.SAIL_ERR_DEV_INIT & 0xFF)
        self._dev_id = dev_id
        self._api = dev.api_generation()

    def get_device_id(self) -> int:
        return self._dev_id

    @property
    def get_target(self) -> Any:
        if self._api < (3, 9):
            raise _missing("Handle", "get_target")
        return lambda: "BM1684X"


class Tensor:
    def __init__(
        self,
        handle: Handle,
        shape: Sequence[int],
        dtype: Dtype = Dtype.BM_FLOAT32,
        own_sys_data: bool = False,
        own_dev_data: bool = False,
    ) -> None:
        if not isinstance(handle, Handle) or not isinstance(dtype, Dtype):
            raise _pybind_type_error("__init__", "(self, handle: Handle, shape: list[int], dtype: Dtype, bool, bool)")
        if own_sys_data or not own_dev_data:
            raise NotImplementedError("the emulator has device-only tensors (own_sys_data=False, own_dev_data=True)")
        self._api = handle._api
        self._dev_id = handle.get_device_id()
        self._shape = [int(d) for d in shape]
        self._dtype = dtype
        size = math.prod(self._shape) if self._shape and all(d > 0 for d in self._shape) else 0
        nbytes = size * np.dtype(_STORAGE[dtype]).itemsize
        self._size, self._buffer, self._valid = size, None, False
        if size and dev.reserve(self._dev_id, nbytes):
            self._valid = True
            self._counted = nbytes
            DEVICE["tensors"] += 1
            DEVICE["bytes"] += nbytes
        else:
            dev.log_error(f"bm_malloc_device_type() err=-1, size={nbytes}")
            dev.log_error("bm_memset_device failed, return=-1")

    def __del__(self) -> None:
        counted = getattr(self, "_counted", None)
        if counted is not None:
            DEVICE["tensors"] -= 1
            DEVICE["bytes"] -= counted
            dev.release(self._dev_id, counted)

    @property
    def _data(self) -> np.ndarray | None:
        """The device memory, None when its allocation failed; made on first use, so a test can
        allocate a 7B bmodel's K/V without touching gigabytes of host memory."""
        if not self._valid:
            return None
        if self._buffer is None:
            self._buffer = np.zeros(self._size, dtype=_STORAGE[self._dtype])
        return self._buffer

    def shape(self) -> list[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def device_id(self) -> int:
        return self._dev_id

    @property
    def is_dev_data_valid(self) -> Any:
        if self._api < (3, 9):
            raise _missing("Tensor", "is_dev_data_valid")
        return lambda: self._data is not None

    def reshape(self, shape: Sequence[int]) -> None:
        if math.prod(shape) != math.prod(self._shape):
            # sail reallocates device memory here (data lost); nothing in edgechat may rely on that
            raise SailTensorError(f"sail emulator: reshape {self._shape} -> {list(shape)} changes the element count")
        self._shape = [int(d) for d in shape]

    def update_data(self, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray) or data.dtype.type not in _UPDATE_DATA_DTYPES:
            kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise TypeError(
                f"update_data(): sail binds float32/int8/uint8/int32/uint16 arrays; got {kind} "
                "(F16/BF16 data goes in as its uint16 bit pattern)"
            )
        if list(data.shape) != self._shape:
            dev.fatal(f"Invalid tensor shape {self._shape} vs. {list(data.shape)}!", dev.SAIL_ERR_TENSOR_SHAPE)
        if data.dtype.type is not _STORAGE[self._dtype]:
            dev.fatal(
                f"update_data: a {data.dtype} array into a {self._dtype.name} tensor (sail copies the bytes as is)",
                dev.SAIL_ERR_TENSOR_SIZE,
            )
        if self._data is None:
            dev.log_error("bm_memcpy_s2d_partial(dev_data.addr=0): the tensor has no device memory")
            return
        self._data[:] = data.reshape(-1)

    def asnumpy(self, shape: Sequence[int] | None = None) -> np.ndarray:
        if self._data is None:
            dev.fatal("asnumpy: sys_data=null and dev_data is null!", dev.SAIL_ERR_TENSOR_EMPTY)
        return self._data.reshape(list(shape) if shape is not None else self._shape).copy()

    def sync_d2d(self, src: Tensor, offset_src: int, offset_dst: int, len: int) -> None:  # noqa: A002 — sail's name
        if self._dtype is not src._dtype:
            dev.fatal("sync_d2d: Data types do not match!", dev.SAIL_ERR_TENSOR_DTYPE)
        if self._data is None or src._data is None:
            dev.fatal("sync_d2d: Data is not on the device!", dev.SAIL_ERR_TENSOR_DEVMEM)
        if min(offset_src, offset_dst, len) < 0 or offset_src + len > src._data.size:
            dev.fatal(
                f"sync_d2d: Source data out of bounds, offset_src:{offset_src}, len:{len}", dev.SAIL_ERR_TENSOR_PARAM
            )
        if offset_dst + len > self._data.size:
            dev.fatal(
                f"sync_d2d: Destination data out of bounds, offset_dst:{offset_dst}, len:{len}",
                dev.SAIL_ERR_TENSOR_PARAM,
            )
        self._data[offset_dst : offset_dst + len] = src._data[offset_src : offset_src + len]

    # emulator-only: the values as float64 (16-bit patterns decoded), for the model
    def _values(self) -> np.ndarray:
        assert self._data is not None
        return _decode(self._data, self._dtype).reshape(self._shape)


def _decode(storage: np.ndarray, dtype: Dtype) -> np.ndarray:
    if dtype is Dtype.BM_FLOAT16:
        return storage.view(np.float16).astype(np.float64)
    if dtype is Dtype.BM_BFLOAT16:
        return dev.from_bf16_bits(storage).astype(np.float64)
    return storage.astype(np.float64)


def _encode(values: np.ndarray, dtype: Dtype) -> np.ndarray:
    if dtype is Dtype.BM_FLOAT16:
        return values.astype(np.float16).view(np.uint16)
    if dtype is Dtype.BM_BFLOAT16:
        return dev.to_bf16_bits(values)
    return values.astype(_STORAGE[dtype])


def _round(values: np.ndarray, dtype: Dtype) -> np.ndarray:
    return _decode(_encode(values, dtype), dtype)


class EngineLLM:
    def __init__(self, bmodel_path: str, dev_ids: list[int]) -> None:
        if not dev_ids:
            dev.log_error("Input tpus is empty!")
            raise SailEngineError("EngineLLM device_ids error!")
        if not os.path.exists(bmodel_path):
            dev.log_error(f"bmodel {bmodel_path} does not exist")
            raise SailEngineError("EngineLLM bmodel error!")
        for d in dev_ids:
            if not 0 <= d < dev.tpu_num():
                dev.log_error(f"Query tpu id: {d} failed! tpu {d} may not exist!")
                raise SailEngineError("Failed due to an invalid device handle.")
        try:
            self.spec = read_bmodel(bmodel_path)
        except RuntimeError as err:
            dev.log_error(str(err))
            raise SailEngineError("EngineLLM related error!") from None
        if len(dev_ids) < self.spec.devices or not dev.reserve(dev_ids[0], self.spec.device_bytes()):
            dev.log_error(f"Load bmodel {bmodel_path} failed")
            raise SailEngineError("EngineLLM related error!")
        self._reserved = (dev_ids[0], self.spec.device_bytes())
        self._api = dev.api_generation()
        self._dev_ids = list(dev_ids)
        self._graphs = graphs(self.spec)
        self._weights: Weights | None = None  # made on first use, as a TPU loads coefficients once
        self.calls: Counter[str] = Counter()  # emulator-only: process() calls per graph kind

    def __del__(self) -> None:
        reserved = getattr(self, "_reserved", None)
        if reserved is not None:
            dev.release(*reserved)

    # ---- information, both generations ----

    def get_device_ids(self) -> list[int]:
        return list(self._dev_ids)

    def get_graph_names(self) -> list[str]:
        return list(self._graphs)

    def get_input_names(self, graph_name: str) -> list[str]:
        return list(self._graph(graph_name).names_in)

    def get_output_names(self, graph_name: str) -> list[str]:
        return list(self._graph(graph_name).names_out)

    def get_input_shape(self, graph_name: str, key: Any, stage: int | None = None) -> list[int]:
        return list(self._io(graph_name, key, stage, "input")[1])

    def get_output_shape(self, graph_name: str, key: Any, stage: int | None = None) -> list[int]:
        return list(self._io(graph_name, key, stage, "output")[1])

    def get_input_dtype(self, graph_name: str, key: Any) -> Dtype:
        return Dtype[self._io(graph_name, key, None, "input")[2]]

    def get_output_dtype(self, graph_name: str, key: Any) -> Dtype:
        return Dtype[self._io(graph_name, key, None, "output")[2]]

    # ---- information, >= 3.9 only ----

    @property
    def get_input_num(self) -> Any:
        self._require_index_api("get_input_num")
        return lambda graph_name: len(self._graph(graph_name).inputs)

    @property
    def get_output_num(self) -> Any:
        self._require_index_api("get_output_num")
        return lambda graph_name: len(self._graph(graph_name).outputs)

    @property
    def get_input_name(self) -> Any:
        self._require_index_api("get_input_name")
        return lambda graph_name, index: self._io(graph_name, index, None, "input")[0]

    @property
    def get_output_name(self) -> Any:
        self._require_index_api("get_output_name")
        return lambda graph_name, index: self._io(graph_name, index, None, "output")[0]

    @property
    def get_input_tensor_devid(self) -> Any:
        self._require_index_api("get_input_tensor_devid")
        return lambda graph_name, index: self._devid(graph_name, index, "input")

    @property
    def get_output_tensor_devid(self) -> Any:
        self._require_index_api("get_output_tensor_devid")
        return lambda graph_name, index: self._devid(graph_name, index, "output")

    # ---- inference ----

    def process(
        self,
        graph_name: str,
        input: Mapping[Any, Tensor],  # noqa: A002 — sail's name
        output: Mapping[Any, Tensor],
        core_list: list[int] | None = None,
    ) -> None:
        if self._api < (3, 9) and core_list is not None:
            raise _pybind_type_error("process", "(self, graph_name: str, input: dict, output: dict)")
        graph = self._graph(graph_name)
        ins = self._bind(graph_name, graph, graph.inputs, input, "input")
        outs = self._bind(graph_name, graph, graph.outputs, output, "output")
        if graph.devices > 1:
            raise NotImplementedError("the sail emulator lays out multi-device bmodels but does not run them")
        results = self._run(graph, [t._values() for t in ins])  # all computed before any write
        for tensor, value in zip(outs, results, strict=True):
            assert tensor._data is not None
            tensor._data[:] = _encode(value, tensor._dtype).reshape(-1)
        self.calls[graph.kind] += 1
        return None

    # ---- helpers ----

    def _require_index_api(self, name: str) -> None:
        if self._api < (3, 9):
            raise _missing("EngineLLM", name)

    def _graph(self, name: str) -> Graph:
        if not isinstance(name, str):
            raise _pybind_type_error("EngineLLM", "graph_name: str")
        try:
            return self._graphs[name]
        except KeyError:
            raise IndexError("map::at") from None  # std::out_of_range from graphs_.at(name)

    def _io(self, graph_name: str, key: Any, stage: int | None, what: str) -> tuple[str, list[int], str]:
        ios = getattr(self._graph(graph_name), f"{what}s")
        if self._api < (3, 9):  # by name, no stage argument
            if not isinstance(key, str) or stage is not None:
                raise _pybind_type_error(f"get_{what}_shape", "(self, graph_name: str, tensor_name: str)")
            for io in ios:
                if io[0] == key:
                    return io
            raise SailEngineError(f"no {what} tensor named {key!r} in {graph_name}")
        if not isinstance(key, int) or isinstance(key, bool) or (stage not in (None, 0)):
            raise _pybind_type_error(f"get_{what}_shape", "(self, graph_name: str, index: int, stage: int = 0)")
        if not 0 <= key < len(ios):
            raise IndexError("vector::_M_range_check")
        return ios[key]

    def _devid(self, graph_name: str, index: int, what: str) -> int:
        graph = self._graph(graph_name)
        ios = graph.inputs if what == "input" else graph.outputs
        self._io(graph_name, index, None, what)
        return self._dev_ids[index // (len(ios) // graph.devices)]

    def _bind(self, graph_name: str, graph: Graph, ios: list, given: Mapping[Any, Tensor], what: str) -> list[Tensor]:
        if not isinstance(given, Mapping) or any(not isinstance(t, Tensor) for t in given.values()):
            raise _pybind_type_error("process", "(self, graph_name: str, input: dict, output: dict, ...)")
        if self._api < (3, 9):
            keys = [(name, 0) for name, _, _ in ios]
            if any(not (isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], str)) for k in given):
                raise _pybind_type_error(
                    "process", "(self, graph_name: str, input: dict[tuple[str, int], Tensor], ...)"
                )
        else:
            keys = list(range(len(ios)))
            if any(not isinstance(k, int) or isinstance(k, bool) for k in given):
                raise _pybind_type_error("process", "(self, graph_name: str, input: dict[int, Tensor], ...)")
        if set(given) - set(keys):
            raise SailEngineError(
                f"{graph_name}: {what} keys {sorted(map(str, set(given) - set(keys)))} are not in the graph"
            )
        bound = []
        for key, (name, shape, dtype) in zip(keys, ios, strict=True):
            tensor = given.get(key)
            if tensor is None:
                dev.fatal(f"{graph_name}: {what} {key!r} missing: sail dereferences a null tensor", dev.SEGFAULT)
            if tensor._data is None:
                dev.fatal(f"{graph_name}: {what} {name} has no device memory", dev.SAIL_ERR_TENSOR_DEVMEM)
            if tensor._dtype.name != dtype:
                dev.fatal(
                    f"{graph_name}: {what} {name} is a {tensor._dtype.name} tensor, the graph reads {dtype}: "
                    "the runtime would read its bytes as garbage",
                    dev.SAIL_ERR_TENSOR_DTYPE,
                )
            if tensor.device_id() != self._devid_of(graph, ios, keys.index(key)):
                dev.fatal(
                    f"{graph_name}: {what} {name} lives on another TPU than the graph's", dev.SAIL_ERR_TENSOR_DEVMEM
                )
            if tensor.shape() != shape:
                dev.log_error("bmrt_launch_tensor_ex fail!")
                raise SailEngineError(f"Failed during the inference process. ({name} is {tensor.shape()}, not {shape})")
            bound.append(tensor)
        return bound

    def _devid_of(self, graph: Graph, ios: list, index: int) -> int:
        return self._dev_ids[index // (len(ios) // graph.devices)]

    @property
    def weights(self) -> Weights:
        if self._weights is None:
            self._weights = model_weights(self.spec)
        return self._weights

    def _run(self, graph: Graph, args: list[np.ndarray]) -> list[np.ndarray]:
        spec, w = self.spec, self.weights
        if graph.kind in ("embedding", "embedding_cache"):
            ids = args[0].astype(np.int64)  # an id outside the vocabulary wraps: a TPU gathers garbage silently
            return [np.take(w.embed, ids, axis=0, mode="wrap").astype(np.float64)]
        if graph.kind == "lm_head":
            return [np.array([[lm_head(spec, w, args[0][0])]], dtype=np.float64)]
        kv = Dtype[spec.kv_dtype]
        hidden, positions, mask = args[0][0], args[1][0].astype(np.int64), args[2][0, 0]
        past = None if graph.kind == "block" else (args[3][0], args[4][0])
        out, k, v = decoder_layer(spec, w.layers[graph.layer], hidden, positions, mask, past, lambda a: _round(a, kv))
        return [_round(out, Dtype.BM_FLOAT32)[None], k[None], v[None]]
