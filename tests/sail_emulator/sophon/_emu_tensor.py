"""TEST DOUBLE, the tensor side of `sophon.sail`: Dtype, Handle, Tensor, device queries and the
error classes; the behaviour mirrored is listed in sail.py."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sophon import _emu_device as dev


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
    if not 0 <= dev_id < dev.tpu_num() or dev_id in dev.DEAD:
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
            dev.DEVICE["tensors"] += 1
            dev.DEVICE["bytes"] += nbytes
        else:
            dev.log_error(f"bm_malloc_device_type() err=-1, size={nbytes}")
            dev.log_error("bm_memset_device failed, return=-1")

    def __del__(self) -> None:
        counted = getattr(self, "_counted", None)
        if counted is not None:
            dev.DEVICE["tensors"] -= 1
            dev.DEVICE["bytes"] -= counted
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
