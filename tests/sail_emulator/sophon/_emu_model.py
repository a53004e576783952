"""TEST DOUBLE, model side: the emulated "bmodel" (a JSON file), its graphs and their numerics.

The graphs and their dtypes are those of Sophgo's compiled Baichuan2 bmodels:
- sophgo/sophon-demo `sample/Baichuan2/tools/export_onnx.py`: graph names, tensor names and shapes
  (`embedding`, `embedding_cache`, `block_i`, `block_cache_i`, `lm_head` with argmax inside).
- sophgo/sophon-demo `sample/Baichuan2/scripts/gen_bmodel.sh` (same in sophgo/LLM-TPU
  `models/Baichuan2/compile/compile.sh`): int8 = `--quantize W8F16`, int4 = `--quantize W4BF16`,
  and only `--quant_output_list 2,3` (block outputs past_k/past_v) and `--quant_input_list 4,5`
  (block_cache inputs history_k/history_v) take the quantized dtype. Every other input and
  output stays F32: hidden states, the attention mask, lm_head's input. Ids and positions are
  INT32, lm_head's token INT32. So: int8 -> K/V in F16, int4 -> K/V in BF16.
- sophgo/LLM-TPU `models/Baichuan2/demo/demo.cpp` feeds a `float` mask and `int` ids/positions.
- sophgo/LLM-TPU `models/ChatGLM3/demo/demo.cpp`: a multi-device (`--num_device N`) bmodel's
  graphs repeat their inputs/outputs once per device (block input_num = 3 * N, each on the
  device `input_loc_devices[i]` names) and split the heads of K/V across devices. The emulator
  lays out `devices: 2` bmodels that way (names suffixed `_devN`, its own choice) but does not
  run them.

Numerics: a tiny random-weight Baichuan2-7B-style model (RMSNorm, fused W_pack qkv, RoPE,
causal attention with the additive -1000 mask, SwiGLU MLP, Baichuan2's normalized lm_head,
argmax) computed in float64 and rounded where the bmodel hands data across a graph boundary:
hidden states to F32, K/V to the bmodel's K/V dtype. A cached run and a cache-free recompute
with the same rounding points therefore agree whenever those boundary values agree.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "sail-emulator-bmodel/2"
QUANTS = ("int8", "int4")
ARCHS = ("baichuan2", "qwen2")


@dataclass(frozen=True)
class ModelSpec:
    layers: int = 2
    hidden: int = 32
    heads: int = 4
    intermediate: int = 64
    max_len: int = 64
    vocab: int = 1000
    seed: int = 0
    quant: str = "int8"  # int8: W8F16, K/V in F16; int4: W4BF16, K/V in BF16
    devices: int = 1  # 2: a `_2dev` bmodel (laid out, not run)
    device_mib: int | None = None  # device memory the loaded bmodel takes; None: from the sizes
    omit_graphs: tuple[str, ...] = ()
    rope_base: float = 10000.0
    eps: float = 1e-6
    arch: str = "baichuan2"  # "qwen2": Sophgo's LLM-TPU layout (_emu_qwen), half-type hidden states
    kv_heads: int = 0  # qwen2: K/V heads (grouped-query attention); 0 = heads
    lm_head_topk: bool = True  # qwen2: lm_head gives the top-1 id; False: logits [1, V]
    extra_heads: tuple[str, ...] = ()  # qwen2: "greedy_head", "sample_head" (with logits from lm_head)
    history_kv: bool = False  # qwen2: `block_kv_i` graphs, and block_i/block_kv_i dynamic (--use_history_kv)
    dynamic: bool = False  # qwen2: block_i dynamic (llm_convert.py --dynamic), with or without block_kv_i
    batch: int = 1  # qwen2: decode graphs (embedding_cache, block_cache_i, lm_head) for N sequences at once

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dtype(self) -> str:
        return "BM_FLOAT16" if self.quant == "int8" else "BM_BFLOAT16"

    def device_bytes(self) -> int:
        """Coefficients and activation buffers a loaded bmodel holds on its first TPU."""
        if self.device_mib is not None:
            return self.device_mib << 20
        h, i, v, L = self.hidden, self.intermediate, self.vocab, self.max_len
        weight_bytes = 1.0 if self.quant == "int8" else 0.5
        layers = self.layers * (4 * h * h + 3 * h * i) * weight_bytes
        tables = 2 * v * h * 2  # embedding and lm_head in F16
        neurons = 8 * L * h * 4 + L * L * 4
        return int(layers + tables) // self.devices + neurons


def write_bmodel(path: str | Path, **spec: Any) -> Path:
    """Write an emulator bmodel (JSON) for tests; keys are ModelSpec fields. No pickle."""
    data = asdict(ModelSpec(**spec))
    data["omit_graphs"] = list(data["omit_graphs"])
    data["extra_heads"] = list(data["extra_heads"])
    path = Path(path)
    path.write_text(json.dumps({"format": FORMAT, **data}))
    return path


def read_bmodel(path: str | Path) -> ModelSpec:
    try:
        data = json.loads(Path(path).read_text())
        if data.pop("format") != FORMAT:
            raise ValueError("format")
        data["omit_graphs"] = tuple(data.get("omit_graphs", ()))
        data["extra_heads"] = tuple(data.get("extra_heads", ()))
        spec = ModelSpec(**data)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise RuntimeError(f"Load bmodel {path} failed ({err})") from None
    if spec.hidden % spec.heads or spec.head_dim % 2 or spec.quant not in QUANTS or spec.heads % spec.devices:
        raise RuntimeError(f"Load bmodel {path} failed (inconsistent sizes)")
    if (
        spec.arch not in ARCHS
        or spec.heads % (spec.kv_heads or spec.heads)
        or set(spec.extra_heads) - {"greedy_head", "sample_head"}
        or spec.batch < 1
        or (spec.batch > 1 and (spec.arch != "qwen2" or spec.extra_heads))
    ):
        raise RuntimeError(f"Load bmodel {path} failed (inconsistent sizes)")
    return spec


# ---- graphs ----


@dataclass
class Graph:
    inputs: list[tuple[str, list[int], str]]  # (name, shape, dtype name), in the bmodel's order
    outputs: list[tuple[str, list[int], str]]
    kind: str
    layer: int = -1
    devices: int = 1
    dynamic: bool = False  # inputs/outputs may be smaller than their shapes at run time
    names_in: list[str] = field(default_factory=list)
    names_out: list[str] = field(default_factory=list)


def graphs(spec: ModelSpec) -> dict[str, Graph]:
    L, H, D = spec.max_len, spec.hidden, spec.devices
    nh, hd, kv = spec.heads // D, spec.head_dim, spec.kv_dtype
    f32, i32 = "BM_FLOAT32", "BM_INT32"
    from sophon._emu_qwen import qwen_table  # the LLM-TPU layout builds on this module's numerics

    table: dict[str, tuple[list, list, str, int]] = (
        qwen_table(spec)
        if spec.arch == "qwen2"
        else {
            "embedding": ([("input_ids", [1, L], i32)], [("input_embed", [1, L, H], f32)], "embedding", -1),
            "embedding_cache": ([("input_ids", [1, 1], i32)], [("input_embed", [1, 1, H], f32)], "embedding_cache", -1),
            "lm_head": ([("hidden_states", [1, H], f32)], [("token", [1, 1], i32)], "lm_head", -1),
        }
    )
    for i in range(spec.layers if spec.arch == "baichuan2" else 0):
        table[f"block_{i}"] = (
            [("input_states", [1, L, H], f32), ("position_ids", [1, L], i32), ("attention_mask", [1, 1, L, L], f32)],
            [("hidden_states", [1, L, H], f32), ("past_k", [1, L, nh, hd], kv), ("past_v", [1, L, nh, hd], kv)],
            "block",
            i,
        )
        table[f"block_cache_{i}"] = (
            [
                ("input_states", [1, 1, H], f32),
                ("position_ids", [1, 1], i32),
                ("attention_mask", [1, 1, 1, L + 1], f32),
                ("history_k", [1, L, nh, hd], kv),
                ("history_v", [1, L, nh, hd], kv),
            ],
            [("hidden_states", [1, 1, H], f32), ("past_k", [1, 1, nh, hd], kv), ("past_v", [1, 1, nh, hd], kv)],
            "block_cache",
            i,
        )
    out = {}
    for name, (ins, outs, kind, layer) in table.items():
        if name in spec.omit_graphs:
            continue
        if D > 1:  # one group of inputs/outputs per device, as tpu-mlir lays out --num_device N
            ins = [(f"{n}_dev{d}", s, t) for d in range(D) for n, s, t in ins]
            outs = [(f"{n}_dev{d}", s, t) for d in range(D) for n, s, t in outs]
        graph = Graph(
            ins, outs, kind, layer, D, dynamic=(spec.history_kv or spec.dynamic) and kind in ("block", "block_kv")
        )
        graph.names_in = [n for n, _, _ in ins]
        graph.names_out = [n for n, _, _ in outs]
        out[name] = graph
    return out


# ---- numerics ----


@dataclass
class Weights:
    embed: np.ndarray  # [V, H] float16 values
    layers: list[dict[str, np.ndarray]]
    norm: np.ndarray
    lm_head: np.ndarray  # [V, H], rows of unit length (Baichuan2's NormHead after its first call)


@functools.lru_cache(maxsize=4)
def model_weights(spec: ModelSpec) -> Weights:
    """Deterministic random weights for `spec` (shared by the emulator and test references);
    cached, since drawing a 125696-token vocabulary's tables takes a good part of a second."""
    rng = np.random.default_rng(spec.seed)
    if spec.arch == "qwen2":
        from sophon._emu_qwen import qwen_weights

        return Weights(*qwen_weights(spec, rng))
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


def decoder_layer(
    spec: ModelSpec,
    w: Mapping[str, np.ndarray],
    hidden: np.ndarray,
    positions: np.ndarray,
    mask: np.ndarray,
    past: tuple[np.ndarray, np.ndarray] | None,
    round_kv: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Baichuan2 decoder layer over T rows; mask [T, S] is added to the scores, S = past + T.
    Returns (hidden in float64, k, v rounded by `round_kv`)."""
    t, nh, hd = hidden.shape[0], spec.heads, spec.head_dim
    x = _rms_norm(hidden, w["ln1"], spec.eps)
    q, k, v = np.split(x @ w["w_pack"].T, 3, axis=-1)
    q = _rope(q.reshape(t, nh, hd), positions, spec.rope_base)
    k = round_kv(_rope(k.reshape(t, nh, hd), positions, spec.rope_base))
    v = round_kv(v.reshape(t, nh, hd))
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
    return hidden + mlp, k, v


def lm_head(spec: ModelSpec, weights: Weights, hidden: np.ndarray) -> int:
    x = _rms_norm(hidden.astype(np.float64), weights.norm, spec.eps)
    return int(np.argmax(weights.lm_head @ x))
