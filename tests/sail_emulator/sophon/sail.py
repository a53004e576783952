"""TEST DOUBLE of `sophon.sail` (Sophgo's TPU runtime): a numpy emulator, not a TPU driver.

It exists so edgechat's sail backend can be proven without a BM1684X, and it is meant to be as
strict as the real wheel, never kinder. It offers only what sophon-demo's Baichuan2 sample and
edgechat use: `Handle`, `Tensor`, `Dtype`, `EngineLLM`, `get_available_tpu_num`, `get_dev_stat`,
and runs the graphs of `_emu_model` (a tiny random Baichuan2-style model stored as JSON) or, with
`arch="qwen2"`, of `_emu_qwen`: sophgo/LLM-TPU's layout (Qwen2.5/Qwen3/DeepSeek-R1-Distill) with
F16/BF16 hidden states and masks, grouped K/V heads, lm_head giving the id or logits, optional
`greedy_head` / `sample_head`, and optional dynamic `block_kv_i` graphs (history K/V): a dynamic
graph runs on the tensors' own shapes up to its maximum, which must agree on T new and P history
rows, and `get_is_dynamic(graph)` exists from 3.9 on. `EngineLLM.fed` counts the token rows the
prefill graphs computed (emulator-only, for tests and bench/tpu_history.py).

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
- Several TPUs: $SAIL_EMULATOR_TPU_NUM devices, each with its own memory; $SAIL_EMULATOR_BROKEN_TPUS
  lists ids that are present but fail to load a bmodel (SailEngineError), and the emulator-only
  `kill(dev_id)` makes a TPU stop answering mid-run (its process() raises SailEngineError, as a
  failed bmrt_launch_tensor_ex does; get_dev_stat raises). What a real dead chip does (an error,
  a hang, the process ending) is not known here: the emulator takes the error.
- Timing (emulator-only, off by default): `set_timing(Timing(ftl_s, tok_s))` makes each graph
  call add a simulated latency to `BUSY[dev_id]` (`_emu_timing` states the model).
- Live device tensors are counted in `DEVICE`; memory returns when the last reference goes.
"""

from __future__ import annotations

from sophon._emu_device import DEVICE, install_as, kill, revive  # noqa: F401 — emulator-only helpers for tests
from sophon._emu_device import USED as DEVICE_USED  # noqa: F401 — bytes taken on each TPU, for tests
from sophon._emu_engine import EngineLLM  # noqa: F401
from sophon._emu_model import ModelSpec, model_weights, read_bmodel, write_bmodel  # noqa: F401 — for tests
from sophon._emu_tensor import (  # noqa: F401
    Dtype,
    Handle,
    SailDeviceError,
    SailEngineError,
    SailTensorError,
    Tensor,
    get_available_tpu_num,
    get_dev_stat,
)
from sophon._emu_timing import BUSY, Timing, set_timing  # noqa: F401 — emulator-only timing model
