"""TEST DOUBLE of `sophon.sail` (Sophgo's TPU runtime): a numpy emulator, not a TPU driver.

It exists so the sail backend (edgechat/engines/sail.py) can be proven without a BM1684X. It offers
only what that backend and sophon-demo's Baichuan2 sample use: `Handle`, `Tensor`, `Dtype`,
`EngineLLM` and `get_available_tpu_num`, and executes a tiny random-weight Baichuan2-7B-style model
(RMSNorm, fused W_pack qkv, RoPE, causal attention with the additive -1000 mask, SwiGLU MLP,
Baichuan2's normalized lm_head, argmax) split into exactly the seed bmodel's graphs:

    embedding        input_ids [1,L] i32                      -> input_embed [1,L,H] f16
    embedding_cache  input_ids [1,1] i32                      -> input_embed [1,1,H] f16
    block_i          input_states [1,L,H], position_ids [1,L] i32, attention_mask [1,1,L,L] f16
                                                              -> hidden_states, past_k, past_v [1,L,nh,hd]
    block_cache_i    input_states [1,1,H], position_ids [1,1], attention_mask [1,1,1,L+1],
                     history_k, history_v [1,L,nh,hd]         -> hidden_states [1,1,H], past_k, past_v [1,1,nh,hd]
    lm_head          hidden_states [1,H] f16                  -> token [1,1] i32

The "bmodel" is a small JSON file (see `write_bmodel`): layers, hidden, heads, intermediate,
max_len, vocab and a seed for the weights; `omit_graphs` builds a broken bmodel. No pickle.

Numerics: the model computes in float64 and rounds to float16 where a real f16 bmodel hands data
across a graph boundary (embeddings, each layer's output, the k/v written to the cache), so a
cached run and a cache-free recompute agree exactly whenever their graph-boundary values agree.

Real-sail behaviour mirrored, and what was assumed (sophon-sail 3.8.0 as used by the seed):
- `Handle(bad_id)` prints "Error: Invalid tpu id: N!" and ends the process with exit code 1
  (sail's C++ `Handle` calls `exit(SAIL_ERR_DEVICE_INIT)`); callers must check
  `get_available_tpu_num()` first. The device count is $SAIL_EMULATOR_TPU_NUM (default 1).
- `EngineLLM(path, dev_ids)` raises RuntimeError for an empty id list, a missing file, an
  unknown device id or a file that is not a bmodel (sail throws SailEngineError/RuntimeError).
- `process(graph, inputs, outputs)` takes dicts keyed `(tensor_name, 0)` as the seed passes them
  (newer sail versions key by index; not emulated). Shapes are static: every tensor must have
  the graph's exact shape and dtype; an input tensor may also be an output (the seed runs the
  blocks in place). Returns 0.
- `Tensor(handle, shape, dtype, own_sys_data, own_dev_data)`: only device-owning tensors
  (`own_dev_data=True`, as the seed allocates) are emulated. `update_data` requires the array's
  dtype and element count to match (stricter than sail, so a wrong dtype fails tests instead of
  being converted). `sync_d2d(src, offset_src, offset_dst, len)` counts elements, as documented.
  Out-of-bounds copies raise (on a TPU they would corrupt memory).
- Live device tensors are counted in `DEVICE` so tests can check that memory is released when
  the last reference to a Tensor goes, as pybind11 frees sail tensors.
- An embedding id outside the model's vocabulary wraps around (a TPU gathers garbage silently).
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "sail-emulator-bmodel/1"
TPU_NUM_ENV = "SAIL_EMULATOR_TPU_NUM"
MASKED = -1000.0
DEVICE: dict[str, int] = {"tensors": 0, "bytes": 0}  # live device tensors, for release tests


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


_NUMPY = {
    Dtype.BM_FLOAT32: np.float32,
    Dtype.BM_FLOAT16: np.float16,
    Dtype.BM_INT8: np.int8,
    Dtype.BM_UINT8: np.uint8,
    Dtype.BM_INT16: np.int16,
    Dtype.BM_UINT16: np.uint16,
    Dtype.BM_INT32: np.int32,
    Dtype.BM_UINT32: np.uint32,
}


def get_available_tpu_num() -> int:
    return int(os.environ.get(TPU_NUM_ENV, "1"))


class Handle:
    def __init__(self, dev_id: int) -> None:
        if not 0 <= dev_id < get_available_tpu_num():
            print(f"Error: Invalid tpu id: {dev_id}!", flush=True)
            sys.stderr.flush()
            os._exit(1)  # what sail does: exit(SAIL_ERR_DEVICE_INIT) from C++
        self._dev_id = dev_id

    def get_device_id(self) -> int:
        return self._dev_id

    def get_target(self) -> str:
        return "BM1684X (sail emulator, a test double)"


class Tensor:
    def __init__(
        self,
        handle: Handle,
        shape: list[int],
        dtype: Dtype = Dtype.BM_FLOAT32,
        own_sys_data: bool = False,
        own_dev_data: bool = False,
    ) -> None:
        if not isinstance(handle, Handle):
            raise TypeError("Tensor(handle, shape, dtype, own_sys_data, own_dev_data): handle must be a sail.Handle")
        if not own_dev_data:
            raise NotImplementedError("the emulator only has tensors with own_dev_data=True")
        if dtype not in _NUMPY:
            raise NotImplementedError(f"the emulator has no {dtype}")
        self._handle = handle
        self._shape = [int(d) for d in shape]
        self._dtype = dtype
        self._data = np.zeros(math.prod(self._shape), dtype=_NUMPY[dtype])
        self._counted = self._data.nbytes
        DEVICE["tensors"] += 1
        DEVICE["bytes"] += self._counted

    def __del__(self) -> None:
        counted = getattr(self, "_counted", None)
        if counted is not None:
            DEVICE["tensors"] -= 1
            DEVICE["bytes"] -= counted

    def shape(self) -> list[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def reshape(self, shape: list[int]) -> None:
        if math.prod(shape) != self._data.size:
            raise RuntimeError(f"reshape {self._shape} -> {list(shape)}: element count differs")
        self._shape = [int(d) for d in shape]

    def update_data(self, data: np.ndarray) -> None:
        data = np.asarray(data)
        if data.dtype != self._data.dtype or data.size != self._data.size:
            raise RuntimeError(
                f"update_data: got {data.dtype}[{data.size}], tensor is {self._data.dtype}[{self._data.size}]"
            )
        self._data[:] = data.reshape(-1)

    def asnumpy(self, shape: list[int] | None = None) -> np.ndarray:
        return self._data.reshape(shape or self._shape).copy()

    def sync_d2d(self, src: Tensor, offset_src: int, offset_dst: int, len: int) -> None:  # noqa: A002 — sail's name
        if src._data.dtype != self._data.dtype:
            raise RuntimeError("sync_d2d between tensors of different dtypes")
        if (
            min(offset_src, offset_dst, len) < 0
            or offset_src + len > src._data.size
            or offset_dst + len > self._data.size
        ):
            raise RuntimeError(
                f"sync_d2d out of bounds: src[{offset_src}:+{len}] of {src._data.size}, "
                f"dst[{offset_dst}:+{len}] of {self._data.size}"
            )
        self._data[offset_dst : offset_dst + len] = src._data[offset_src : offset_src + len]

    # emulator-only view for the model; not part of sail
    def _array(self) -> np.ndarray:
        return self._data.reshape(self._shape)


# ---- the emulated bmodel ----


@dataclass(frozen=True)
class ModelSpec:
    layers: int = 2
    hidden: int = 32
    heads: int = 4
    intermediate: int = 64
    max_len: int = 64
    vocab: int = 1000
    seed: int = 0
    omit_graphs: tuple[str, ...] = ()
    rope_base: float = 10000.0
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def write_bmodel(path: str | Path, **spec: Any) -> Path:
    """Write an emulator bmodel (JSON) for tests; keys are ModelSpec fields."""
    data = asdict(ModelSpec(**spec))
    data["omit_graphs"] = list(data["omit_graphs"])
    path = Path(path)
    path.write_text(json.dumps({"format": FORMAT, **data}))
    return path


def read_bmodel(path: str | Path) -> ModelSpec:
    try:
        data = json.loads(Path(path).read_text())
        if data.pop("format") != FORMAT:
            raise ValueError("format")
        data["omit_graphs"] = tuple(data.get("omit_graphs", ()))
        spec = ModelSpec(**data)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise RuntimeError(f"Load bmodel {path} failed ({err})") from None
    if spec.hidden % spec.heads or spec.head_dim % 2:
        raise RuntimeError(f"Load bmodel {path} failed (hidden/heads must give an even head_dim)")
    return spec


@dataclass
class Weights:
    embed: np.ndarray  # [V, H] float16 values
    layers: list[dict[str, np.ndarray]]
    norm: np.ndarray
    lm_head: np.ndarray  # [V, H], rows of unit length (Baichuan2's NormHead after its first call)


def model_weights(spec: ModelSpec) -> Weights:
    """Deterministic random weights for `spec` (shared by the emulator and test references)."""
    rng = np.random.default_rng(spec.seed)
    h, inter = spec.hidden, spec.intermediate
    embed = rng.standard_normal((spec.vocab, h)).astype(np.float16)
    layers = []
    for _ in range(spec.layers):
        layers.append(
            {
                "ln1": 1.0 + 0.1 * rng.standard_normal(h),
                "w_pack": rng.standard_normal((3 * h, h)) * (1.5 / math.sqrt(h)),
                "o_proj": rng.standard_normal((h, h)) / math.sqrt(h),
                "ln2": 1.0 + 0.1 * rng.standard_normal(h),
                "gate": rng.standard_normal((inter, h)) / math.sqrt(h),
                "up": rng.standard_normal((inter, h)) / math.sqrt(h),
                "down": rng.standard_normal((h, inter)) / math.sqrt(inter),
            }
        )
    norm = 1.0 + 0.1 * rng.standard_normal(h)
    head = rng.standard_normal((spec.vocab, h))
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    return Weights(embed, layers, norm, head)


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotary embedding, rotate-half form; x [T, nh, hd], positions [T]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    freqs = np.outer(positions.astype(np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def _decoder_layer(
    spec: ModelSpec,
    w: Mapping[str, np.ndarray],
    hidden: np.ndarray,
    positions: np.ndarray,
    mask: np.ndarray,
    past: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Baichuan2 decoder layer over T rows; mask [T, S] is added to the scores, S = past + T."""
    t, nh, hd = hidden.shape[0], spec.heads, spec.head_dim
    x = _rms_norm(hidden, w["ln1"], spec.eps)
    q, k, v = np.split(x @ w["w_pack"].T, 3, axis=-1)
    q = _rope(q.reshape(t, nh, hd), positions, spec.rope_base)
    k = _f16(_rope(k.reshape(t, nh, hd), positions, spec.rope_base))
    v = _f16(v.reshape(t, nh, hd))
    keys, values = (k, v) if past is None else (np.concatenate([past[0], k]), np.concatenate([past[1], v]))
    scores = np.einsum("tnd,snd->nts", q, keys) / math.sqrt(hd) + mask[None, :, :]
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("nts,snd->tnd", probs, values).reshape(t, nh * hd) @ w["o_proj"].T
    hidden = hidden + attn
    y = _rms_norm(hidden, w["ln2"], spec.eps)
    gate = y @ w["gate"].T
    mlp = ((gate / (1.0 + np.exp(-gate))) * (y @ w["up"].T)) @ w["down"].T
    return _f16(hidden + mlp), k, v


def _lm_head(spec: ModelSpec, weights: Weights, hidden: np.ndarray) -> int:
    x = _rms_norm(hidden.astype(np.float64), weights.norm, spec.eps)
    return int(np.argmax(weights.lm_head @ x))


@dataclass
class _Graph:
    inputs: list[tuple[str, list[int], Dtype]]
    outputs: list[tuple[str, list[int], Dtype]]
    layer: int = -1
    kind: str = ""
    names_in: list[str] = field(default_factory=list)
    names_out: list[str] = field(default_factory=list)


def _graphs(spec: ModelSpec) -> dict[str, _Graph]:
    L, H, nh, hd = spec.max_len, spec.hidden, spec.heads, spec.head_dim
    f16, i32 = Dtype.BM_FLOAT16, Dtype.BM_INT32
    graphs = {
        "embedding": _Graph([("input_ids", [1, L], i32)], [("input_embed", [1, L, H], f16)], kind="embedding"),
        "embedding_cache": _Graph(
            [("input_ids", [1, 1], i32)], [("input_embed", [1, 1, H], f16)], kind="embedding_cache"
        ),
        "lm_head": _Graph([("hidden_states", [1, H], f16)], [("token", [1, 1], i32)], kind="lm_head"),
    }
    for i in range(spec.layers):
        graphs[f"block_{i}"] = _Graph(
            [("input_states", [1, L, H], f16), ("position_ids", [1, L], i32), ("attention_mask", [1, 1, L, L], f16)],
            [("hidden_states", [1, L, H], f16), ("past_k", [1, L, nh, hd], f16), ("past_v", [1, L, nh, hd], f16)],
            layer=i,
            kind="block",
        )
        graphs[f"block_cache_{i}"] = _Graph(
            [
                ("input_states", [1, 1, H], f16),
                ("position_ids", [1, 1], i32),
                ("attention_mask", [1, 1, 1, L + 1], f16),
                ("history_k", [1, L, nh, hd], f16),
                ("history_v", [1, L, nh, hd], f16),
            ],
            [("hidden_states", [1, 1, H], f16), ("past_k", [1, 1, nh, hd], f16), ("past_v", [1, 1, nh, hd], f16)],
            layer=i,
            kind="block_cache",
        )
    for name in spec.omit_graphs:
        graphs.pop(name, None)
    for g in graphs.values():
        g.names_in = [n for n, _, _ in g.inputs]
        g.names_out = [n for n, _, _ in g.outputs]
    return graphs


class EngineLLM:
    def __init__(self, bmodel_path: str, dev_ids: list[int]) -> None:
        if not dev_ids:
            raise RuntimeError("EngineLLM device_ids error!")
        if not os.path.exists(bmodel_path):
            raise RuntimeError(f"EngineLLM bmodel error! bmodel {bmodel_path} does not exist")
        for dev in dev_ids:
            if not 0 <= dev < get_available_tpu_num():
                raise RuntimeError(f"Query tpu id: {dev} failed! tpu {dev} may not exist!")
        self.spec = read_bmodel(bmodel_path)
        self._weights: Weights | None = None  # made on first use, as a TPU loads coefficients once
        self._graphs = _graphs(self.spec)
        self._dev_ids = list(dev_ids)
        self.calls: Counter[str] = Counter()  # emulator-only: process() calls per graph kind

    # ---- information ----

    def get_device_ids(self) -> list[int]:
        return list(self._dev_ids)

    def get_graph_names(self) -> list[str]:
        return list(self._graphs)

    def get_input_names(self, graph_name: str) -> list[str]:
        return list(self._graph(graph_name).names_in)

    def get_output_names(self, graph_name: str) -> list[str]:
        return list(self._graph(graph_name).names_out)

    def get_input_shape(self, graph_name: str, tensor_name: str) -> list[int]:
        return list(self._io(self._graph(graph_name).inputs, tensor_name)[1])

    def get_output_shape(self, graph_name: str, tensor_name: str) -> list[int]:
        return list(self._io(self._graph(graph_name).outputs, tensor_name)[1])

    def get_input_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return self._io(self._graph(graph_name).inputs, tensor_name)[2]

    def get_output_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        return self._io(self._graph(graph_name).outputs, tensor_name)[2]

    # ---- inference ----

    def process(
        self, graph_name: str, input: dict[tuple[str, int], Tensor], output: dict[tuple[str, int], Tensor]
    ) -> int:  # noqa: A002
        graph = self._graph(graph_name)
        ins = self._bind(graph_name, graph.inputs, input, "input")
        outs = self._bind(graph_name, graph.outputs, output, "output")
        results = self._run(graph, [t._array() for t in ins])  # all computed before any write
        for tensor, value in zip(outs, results, strict=True):
            tensor._data[:] = value.astype(tensor._data.dtype).reshape(-1)
        self.calls[graph.kind] += 1
        return 0

    def _graph(self, name: str) -> _Graph:
        try:
            return self._graphs[name]
        except KeyError:
            raise RuntimeError(f"graph {name!r} is not in this bmodel") from None

    @staticmethod
    def _io(ios: list[tuple[str, list[int], Dtype]], name: str) -> tuple[str, list[int], Dtype]:
        for io in ios:
            if io[0] == name:
                return io
        raise RuntimeError(f"no tensor named {name!r}")

    @staticmethod
    def _bind(graph_name: str, ios: list, given: Mapping[Any, Tensor], what: str) -> list[Tensor]:
        names = {key[0] if isinstance(key, tuple) else key for key in given}
        if any(not (isinstance(k, tuple) and len(k) == 2 and k[1] == 0) for k in given):
            raise TypeError(f"{graph_name}: {what} keys must be (tensor_name, 0)")
        if names != {n for n, _, _ in ios}:
            raise RuntimeError(f"{graph_name}: {what} tensors {sorted(names)} != {[n for n, _, _ in ios]}")
        bound = []
        for name, shape, dtype in ios:
            tensor = given[(name, 0)]
            if tensor.shape() != shape or tensor.dtype() != dtype:
                raise RuntimeError(
                    f"{graph_name}: {what} {name} is {tensor.shape()} {tensor.dtype().name}, "
                    f"the bmodel wants {shape} {dtype.name}"
                )
            bound.append(tensor)
        return bound

    @property
    def weights(self) -> Weights:
        if self._weights is None:
            self._weights = model_weights(self.spec)
        return self._weights

    def _run(self, graph: _Graph, args: list[np.ndarray]) -> list[np.ndarray]:
        spec, w = self.spec, self.weights
        if graph.kind in ("embedding", "embedding_cache"):
            return [np.take(w.embed, args[0].astype(np.int64), axis=0, mode="wrap")]
        if graph.kind == "lm_head":
            return [np.array([[_lm_head(spec, w, args[0][0])]], dtype=np.int32)]
        layer = w.layers[graph.layer]
        if graph.kind == "block":
            hidden, pos, mask = args[0][0], args[1][0], args[2][0, 0]
            out, k, v = _decoder_layer(spec, layer, hidden.astype(np.float64), pos, mask.astype(np.float64), None)
        else:
            hidden, pos, mask = args[0][0], args[1][0], args[2][0, 0]
            past = (args[3][0].astype(np.float64), args[4][0].astype(np.float64))
            out, k, v = _decoder_layer(spec, layer, hidden.astype(np.float64), pos, mask.astype(np.float64), past)
        return [out[None], k[None], v[None]]
