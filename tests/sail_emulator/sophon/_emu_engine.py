"""TEST DOUBLE, `sophon.sail.EngineLLM`: loads an emulated bmodel and runs its graphs in the API
generation the emulator is installed as; the behaviour mirrored is listed in sail.py."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from sophon import _emu_device as dev
from sophon._emu_model import Graph, Weights, decoder_layer, graphs, lm_head, model_weights, read_bmodel
from sophon._emu_qwen import HALF, dynamic_shapes_problem, qwen_layer, qwen_logits, sample_head
from sophon._emu_tensor import (
    Dtype,
    SailEngineError,
    Tensor,
    _encode,
    _missing,
    _pybind_type_error,
    _round,
)
from sophon._emu_timing import charge


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
        if any(dev.broken(d) or d in dev.DEAD for d in dev_ids):
            dev.log_error(f"Load bmodel {bmodel_path} failed: bm_dev_request failed on TPU {dev_ids}")
            raise SailEngineError("EngineLLM related error!")
        if len(dev_ids) < self.spec.devices or not dev.reserve(dev_ids[0], self.spec.device_bytes()):
            dev.log_error(f"Load bmodel {bmodel_path} failed")
            raise SailEngineError("EngineLLM related error!")
        self._reserved = (dev_ids[0], self.spec.device_bytes())
        self._api = dev.api_generation()
        self._dev_ids = list(dev_ids)
        self._graphs = graphs(self.spec)
        self._weights: Weights | None = None  # made on first use, as a TPU loads coefficients once
        self.calls: Counter[str] = Counter()  # emulator-only: process() calls per graph kind
        self.fed: Counter[str] = Counter()  # emulator-only: token rows layer 0 computed, per graph kind

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

    @property
    def get_is_dynamic(self) -> Any:
        self._require_index_api("get_is_dynamic")
        return lambda graph_name: self._graph(graph_name).dynamic

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
        if any(d in dev.DEAD for d in self._dev_ids):
            dev.log_error("bmrt_launch_tensor_ex fail!")
            raise SailEngineError(f"Failed during the inference process. ({graph_name}: TPU {self._dev_ids} died)")
        ins = self._bind(graph_name, graph, graph.inputs, input, "input")
        outs = self._bind(graph_name, graph, graph.outputs, output, "output")
        problem = graph.dynamic and dynamic_shapes_problem(
            graph.kind, [t.shape() for t in ins], [t.shape() for t in outs]
        )
        if problem:
            dev.log_error("bmrt_launch_tensor_ex fail!")
            raise SailEngineError(f"Failed during the inference process. ({graph_name}: {problem})")
        if graph.devices > 1:
            raise NotImplementedError("the sail emulator lays out multi-device bmodels but does not run them")
        results = self._run(graph, [t._values() for t in ins])  # all computed before any write
        charge(self._dev_ids[0], self.spec, graph.kind, [t.shape() for t in ins])  # simulated time, if on
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
            if graph.dynamic and len(tensor.shape()) == len(shape) and all(map(int.__le__, tensor.shape(), shape)):
                pass  # a dynamic graph runs on the shapes it is given, up to its maximum
            elif tensor.shape() != shape:
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
        if spec.arch == "qwen2":
            return self._run_qwen(graph, args)
        if graph.kind == "lm_head":
            return [np.array([[lm_head(spec, w, args[0][0])]], dtype=np.float64)]
        kv = Dtype[spec.kv_dtype]
        hidden, positions, mask = args[0][0], args[1][0].astype(np.int64), args[2][0, 0]
        past = None if graph.kind == "block" else (args[3][0], args[4][0])
        out, k, v = decoder_layer(spec, w.layers[graph.layer], hidden, positions, mask, past, lambda a: _round(a, kv))
        return [_round(out, Dtype.BM_FLOAT32)[None], k[None], v[None]]

    def _run_qwen(self, graph: Graph, args: list[np.ndarray]) -> list[np.ndarray]:
        """The LLM-TPU graphs (sophon._emu_qwen): half-type hidden states, masks and K/V."""
        spec, w = self.spec, self.weights
        if graph.kind == "lm_head":  # one row per sequence of the batch
            logits = np.stack([qwen_logits(spec, w.norm, w.lm_head, row) for row in args[0]])
            return [np.argmax(logits, axis=1)[:, None].astype(np.float64) if spec.lm_head_topk else logits]
        if graph.kind == "greedy_head":
            return [np.array([[np.argmax(args[0][0])]], dtype=np.float64)]
        if graph.kind == "sample_head":
            return sample_head(args, graph.outputs[0][1][1])
        half = Dtype[HALF[spec.quant]]
        rows = []
        for b in range(args[0].shape[0]):  # each sequence of a batch on its own K/V and mask
            hidden, positions, mask = args[0][b], args[1][b].astype(np.int64), args[2][b, 0]
            past = None if graph.kind == "block" else (args[3][b], args[4][b])
            self.fed[graph.kind] += hidden.shape[0] if graph.layer == 0 else 0
            rows.append(
                qwen_layer(spec, w.layers[graph.layer], hidden, positions, mask, past, lambda a: _round(a, half))
            )
        return [np.stack([r[i] for r in rows]) for i in range(3)]
