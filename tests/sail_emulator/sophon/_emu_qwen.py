"""TEST DOUBLE, model side for Sophgo's LLM-TPU bmodels (Qwen2.5, Qwen3, DeepSeek-R1-Distill-Qwen,
Llama): a tiny random Qwen2-style model (GQA, RoPE, RMSNorm, SwiGLU, q/k/v biases) laid out as
the graphs those bmodels carry.

Facts mirrored (read, not copied):
- sophgo/tpu-mlir `python/llm/LlmConverter.py` (`gen_block_mlir`): `block_i` takes input_states
  [1,L,H], position_ids [1,L] INT32, attention_mask [1,1,L,L] and gives hidden [1,L,H], past_k
  and past_v [1,L,KV_HEADS,HEAD_DIM]; `block_cache_i` takes [1,1,H], [1,1], a mask [1,1,1,L+1]
  and history_k/v [1,L,KV_HEADS,HEAD_DIM] and gives hidden [1,1,H] and this token's k/v
  [1,1,KV_HEADS,HEAD_DIM]; attention is grouped (q heads share kv heads).
- its `compile_*` steps deploy with `--quantize w4bf16|w4f16|w8f16...` plus `--quant_input
  --quant_output`: hidden states, masks and K/V cross graphs in the half type (F16 or BF16);
  ids and positions stay INT32.
- the same converter's `gen_block_with_kv` (`--use_history_kv`): a prefill graph whose inputs add the
  history's k/v [1,P,KV_HEADS,HEAD_DIM] and whose mask is [1,1,T,P+T]; sophgo/LLM-TPU's Qwen3.5
  demos name it `block_kv_i` beside the fresh `block_i` and compile both dynamic (T and P are
  the run-time shapes; sophon-sail >= 3.9 `get_is_dynamic(graph)` says so).
- batch N (`llm_convert.py -b N`; sophgo/LLM-TPU `models/Qwen3_VL/python_demo_multibatch`): the
  decode graphs take N sequences, BATCH = block_cache_0's input dim 0, history K/V [N,L,...];
  prefill (`embedding`, `block_i`) stays one sequence. The multibatch demo's block_cache gives only
  the hidden state and writes the new K/V in place (row L-1 of each sequence); the emulator keeps
  the 3-output form of the batch-1 graphs with a batch dimension (its own choice).
- sophgo/LLM-TPU `models/Qwen3/python_demo/chat.cpp`: L (SEQLEN) is `embedding`'s input dim 1;
  `lm_head` gives the top-1 id when its output dim 1 is 1 (`lmhead_with_topk`), else logits that
  `greedy_head` (logits -> id) or `penalty_sample_head` turns into a token; masked positions
  hold a large negative number written as a 16-bit pattern (0xF0E2 = -10000 in F16, 0xC61C =
  -9984 in BF16 in Sophgo's pipelines).

The emulator's own choices (not known from the sources): lm_head's logits are F32, and the final
RMSNorm sits in lm_head (the converter folds it into the last block for tied embeddings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sophon._emu_model import _rms_norm, _rope

HALF = {"int8": "BM_FLOAT16", "int4": "BM_BFLOAT16"}  # W8F16 / W4BF16 as Sophgo ships them
SAMPLE_TOP_K, MIN_KEPT = 50, 5  # LlmConverter.gen_sample_head_mlir(max_top_k=50, min_tokens_to_keep=5)


def qwen_table(spec: Any) -> dict[str, tuple[list, list, str, int]]:
    """Graph name -> (inputs, outputs, kind, layer) for a Qwen-style bmodel."""
    L, H, V, B = spec.max_len, spec.hidden, spec.vocab, spec.batch
    kvh, hd, act, i32 = spec.kv_heads or spec.heads, spec.head_dim, HALF[spec.quant], "BM_INT32"
    head_out = ("token", [B, 1], i32) if spec.lm_head_topk else ("m_logits", [B, V], "BM_FLOAT32")
    table: dict[str, tuple[list, list, str, int]] = {
        "embedding": ([("input_ids", [1, L], i32)], [("input_embed", [1, L, H], act)], "embedding", -1),
        "embedding_cache": ([("input_ids", [B, 1], i32)], [("input_embed", [B, 1, H], act)], "embedding_cache", -1),
        "lm_head": ([("hidden_states", [B, H], act)], [head_out], "lm_head", -1),
    }
    if "greedy_head" in spec.extra_heads:
        table["greedy_head"] = ([("m_logits", [1, V], "BM_FLOAT32")], [("token", [1, 1], i32)], "greedy_head", -1)
    if "sample_head" in spec.extra_heads:
        f32, k = "BM_FLOAT32", min(SAMPLE_TOP_K, V)
        table["sample_head"] = (
            [("m_logits", [1, V], f32), ("input_ids", [1, L], i32), ("penalty", [1], f32),
             ("temperature", [1], f32), ("top_k", [1], i32), ("top_p", [1], f32)],
            [("probs", [1, k], f32), ("token_idx", [1, k], i32)],
            "sample_head",
            -1,
        )  # fmt: skip
    kv = [1, L, kvh, hd]
    for i in range(spec.layers):
        table[f"block_{i}"] = (
            [("input_states", [1, L, H], act), ("position_ids", [1, L], i32), ("attention_mask", [1, 1, L, L], act)],
            [("hidden_states", [1, L, H], act), ("past_k", kv, act), ("past_v", kv, act)],
            "block",
            i,
        )
        table[f"block_cache_{i}"] = (
            [
                ("input_states", [B, 1, H], act),
                ("position_ids", [B, 1], i32),
                ("attention_mask", [B, 1, 1, L + 1], act),
                ("history_k", [B, *kv[1:]], act),
                ("history_v", [B, *kv[1:]], act),
            ],
            [("hidden_states", [B, 1, H], act), ("past_k", [B, 1, kvh, hd], act), ("past_v", [B, 1, kvh, hd], act)],
            "block_cache",
            i,
        )
        if spec.history_kv:  # prefill of new tokens after P cached ones: mask [1,1,T,P+T], history [1,P,...]
            table[f"block_kv_{i}"] = (
                [
                    ("input_states", [1, L, H], act),
                    ("position_ids", [1, L], i32),
                    ("attention_mask", [1, 1, L, 2 * L], act),
                    ("history_k", kv, act),
                    ("history_v", kv, act),
                ],
                [("hidden_states", [1, L, H], act), ("past_k", kv, act), ("past_v", kv, act)],
                "block_kv",
                i,
            )
    return table


def dynamic_shapes_problem(kind: str, shapes_in: list[list[int]], shapes_out: list[list[int]]) -> str | None:
    """What bmrt checks of a dynamic block's run-time shapes: T new rows (and P history rows for
    block_kv) the same in every input and output."""
    t = shapes_in[0][1]
    p = shapes_in[3][1] if kind == "block_kv" else 0
    want_mask = [1, 1, t, p + t] if kind == "block_kv" else [1, 1, t, t]
    if shapes_in[1] != [1, t] or shapes_in[2] != want_mask or any(s[1] != t for s in shapes_out):
        return f"run-time shapes {shapes_in} -> {shapes_out} disagree on T={t}, P={p}"
    if kind == "block_kv" and shapes_in[4] != shapes_in[3]:
        return f"history_k {shapes_in[3]} and history_v {shapes_in[4]} differ"
    return None


def qwen_weights(
    spec: Any, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """(embedding [V,H] as F16 values, layers, final norm, lm_head [V,H]) drawn from `rng`."""
    h, inter, hd = spec.hidden, spec.intermediate, spec.head_dim
    kv_dim = (spec.kv_heads or spec.heads) * hd
    embed = rng.standard_normal((spec.vocab, h)).astype(np.float16)
    layers = []
    for _ in range(spec.layers):
        layers.append(
            {
                "ln1": 1.0 + 0.1 * rng.standard_normal(h),
                "wq": rng.standard_normal((spec.heads * hd, h)) * (1.5 / math.sqrt(h)),
                "bq": 0.1 * rng.standard_normal(spec.heads * hd),
                "wk": rng.standard_normal((kv_dim, h)) * (1.5 / math.sqrt(h)),
                "bk": 0.1 * rng.standard_normal(kv_dim),
                "wv": rng.standard_normal((kv_dim, h)) / math.sqrt(h),
                "bv": 0.1 * rng.standard_normal(kv_dim),
                "wo": rng.standard_normal((h, spec.heads * hd)) / math.sqrt(h),
                "ln2": 1.0 + 0.1 * rng.standard_normal(h),
                "gate": rng.standard_normal((inter, h)) / math.sqrt(h),
                "up": rng.standard_normal((inter, h)) / math.sqrt(h),
                "down": rng.standard_normal((h, inter)) / math.sqrt(inter),
            }
        )
    norm = 1.0 + 0.1 * rng.standard_normal(h)
    head = rng.standard_normal((spec.vocab, h)) * (4.0 / math.sqrt(h))
    return embed, layers, norm, head


def qwen_layer(
    spec: Any,
    w: Mapping[str, np.ndarray],
    hidden: np.ndarray,
    positions: np.ndarray,
    mask: np.ndarray,
    past: tuple[np.ndarray, np.ndarray] | None,
    round_half: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One decoder layer over T rows; mask [T, S] is added to the scores (S = past rows + T).
    K/V are rounded to the half type before attention: what the cache holds is what is used."""
    t, nh, kvh, hd = hidden.shape[0], spec.heads, spec.kv_heads or spec.heads, spec.head_dim
    x = _rms_norm(hidden, w["ln1"], spec.eps)
    q = _rope((x @ w["wq"].T + w["bq"]).reshape(t, nh, hd), positions, spec.rope_base)
    k = round_half(_rope((x @ w["wk"].T + w["bk"]).reshape(t, kvh, hd), positions, spec.rope_base))
    v = round_half((x @ w["wv"].T + w["bv"]).reshape(t, kvh, hd))
    keys, values = (k, v) if past is None else (np.concatenate([past[0], k]), np.concatenate([past[1], v]))
    group = nh // kvh
    keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
    scores = np.einsum("tnd,snd->nts", q, keys) / math.sqrt(hd) + mask[None, :, :]
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    hidden = hidden + np.einsum("nts,snd->tnd", probs, values).reshape(t, nh * hd) @ w["wo"].T
    y = _rms_norm(hidden, w["ln2"], spec.eps)
    gate = y @ w["gate"].T
    return hidden + ((gate / (1.0 + np.exp(-gate))) * (y @ w["up"].T)) @ w["down"].T, k, v


def sample_head(args: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The converter's sample_head: repetition penalty on the logits of `input_ids` (negative ones
    multiplied, positive ones divided), the top K, divided by the temperature, softmax, top-p
    (cumulative probability below top_p, at least MIN_KEPT kept), softmax again. Candidates past
    the run-time top_k get probability 0 (the emulator's reading of `kT`)."""
    logits, ids = args[0][0].copy(), args[1][0].astype(np.int64)
    penalty, temperature, top_k, top_p = args[2][0], args[3][0], int(args[4][0]), args[5][0]
    seen = logits[ids]
    logits[ids] = np.where(seen < 0, seen * penalty, seen / penalty)
    order = np.argsort(-logits, kind="stable")[:k]
    scaled = logits[order] / temperature
    if 0 < top_k < k:
        scaled[top_k:] = -np.inf
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    keep = np.cumsum(probs) < top_p
    keep[:MIN_KEPT] = True
    kept = np.where(keep, scaled, -1000.0)
    final = np.exp(kept - kept.max())
    return [(final / final.sum())[None], order[None].astype(np.float64)]


def qwen_logits(spec: Any, norm: np.ndarray, head: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    return head @ _rms_norm(hidden.astype(np.float64), norm, spec.eps)
