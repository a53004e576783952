"""What a bmodel must look like for the sail engine: its graphs, their shapes, their dtypes and
the TPUs they live on. Two layouts share these graphs: sophon-demo's Baichuan2 (F32 hidden states)
and sophgo/LLM-TPU's Qwen2.5/Qwen3/DeepSeek-R1-Distill/Llama (F16/BF16 hidden states, grouped K/V
heads; their heads are sail_heads). Each problem is one ConfigError at load."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgechat.engines.sail_api import FLOATS, INTEGERS, Io
from edgechat.errors import ConfigError

SINGLE_GRAPHS = ("embedding", "embedding_cache", "lm_head")
Graphs = dict[str, tuple[list[Io], list[Io]]]  # graph name -> (inputs, outputs)


def check_protocol(io: Graphs, dev_ids: Sequence[int], bmodel: Path, heads_problem: str | None = None) -> None:
    """Fail at load, in one line, on a bmodel whose graphs are not the protocol."""
    devices = device_problem(io, dev_ids)
    if devices:
        raise ConfigError(f"{bmodel.name} {devices}")
    problem = shape_problem(io) or dtype_problem(io) or heads_problem
    if problem:
        raise ConfigError(f"{bmodel} is not a sophon-demo Baichuan2 or LLM-TPU (Qwen, Llama) bmodel: {problem}")


def count_layers(net: Any, bmodel: Path) -> int:
    """NUM_LAYERS from the graph names: block_0..block_{N-1}, each with its block_cache_i."""
    names = set(net.get_graph_names())
    blocks = {int(m.group(1)) for n in names if (m := re.fullmatch(r"block_(\d+)", n))}
    layers = 0
    while layers in blocks:
        layers += 1
    missing = [g for g in SINGLE_GRAPHS if g not in names]
    missing += [f"block_cache_{i}" for i in range(layers) if f"block_cache_{i}" not in names]
    if layers == 0:
        missing.append("block_0")
    elif blocks != set(range(layers)):
        missing.append(f"block_{layers}")
    if missing:
        found = ", ".join(sorted(names)[:8]) + (" ..." if len(names) > 8 else "")
        raise ConfigError(
            f"{bmodel} lacks the graphs of a Baichuan2 bmodel (or an LLM-TPU Qwen/Llama one): "
            f"missing {', '.join(missing)} (has {found})"
        )
    return layers


def device_problem(io: Graphs, dev_ids: Sequence[int]) -> str | None:
    """Multi-device (`_2dev`) bmodels are refused: their graphs repeat every input per TPU and
    split K/V heads across TPUs (sophgo/LLM-TPU `models/ChatGLM3/demo/demo.cpp`), a protocol
    no public Baichuan2 bmodel uses (sophon-demo ships `_1dev` only) and nothing here can
    verify without two TPUs. One bmodel on several TPUs is refused too: it would run on the
    first only."""
    fi, _ = io["block_0"]
    if len(fi) > 3 and len(fi) % 3 == 0:
        return (
            f"is compiled for {len(fi) // 3} TPUs (block_0 has {len(fi)} inputs, one group per TPU); "
            "edgechat runs single-TPU bmodels: use a _1dev bmodel with one --dev_ids"
        )
    places = {io.devid for io in fi if io.devid is not None}
    if places - {dev_ids[0]}:
        return f"keeps its inputs on TPUs {sorted(places)}, not on --dev_ids {dev_ids[0]}"
    if len(dev_ids) > 1:
        ids = " ".join(map(str, dev_ids))
        return f"runs on one TPU, and --dev_ids {ids} names {len(dev_ids)}: pass one id"
    return None


def shape_problem(io: Graphs) -> str | None:
    (fi, fo), (ni, no) = io["block_0"], io["block_cache_0"]
    L, H, B = fi[0].shape[1], fi[0].shape[2], ni[0].shape[0]  # B: sequences one decode step takes
    if len(fi) != 3 or len(fo) != 3:
        return "block_0 must take (hidden, position_ids, attention_mask) and give (hidden, past_k, past_v)"
    if len(ni) != 5 or len(no) != 3:
        return "block_cache_0 must take (hidden, position_id, mask, past_k, past_v) and give (hidden, k, v)"
    if fi[0].shape != [1, L, H] or fi[1].shape != [1, L] or fi[2].shape != [1, 1, L, L]:
        return f"block_0 input shapes {[io.shape for io in fi]}, expected [1,L,H], [1,L], [1,1,L,L]"
    if ni[0].shape != [B, 1, H] or ni[1].shape != [B, 1] or ni[2].shape != [B, 1, 1, L + 1]:
        return f"block_cache_0 input shapes {[io.shape for io in ni]}, expected [N,1,H], [N,1], [N,1,1,L+1], ..."
    cache_shape = [1, L] + no[1].shape[2:]
    if not fo[1].shape == fo[2].shape == cache_shape or not ni[3].shape == ni[4].shape == [B, *cache_shape[1:]]:
        return f"KV cache shapes differ: block_0 gives {fo[1].shape}, block_cache_0 takes {ni[3].shape}"
    (emb_i, _), (lm_i, _) = io["embedding_cache"], io["lm_head"]
    if B > 1 and (emb_i[0].shape != [B, 1] or lm_i[0].shape != [B, H]):
        return f"a batch-{B} block_cache needs embedding_cache [{B},1] and lm_head [{B},H]"
    return None


def dtype_problem(io: Graphs) -> str | None:
    """The engine copies hidden states and K/V between graphs with sync_d2d, which needs equal
    dtypes; ids and positions are written as int32, the mask as a float (F32 in Baichuan2's,
    the half type of the hidden states in LLM-TPU's)."""
    (fi, fo), (ni, no) = io["block_0"], io["block_cache_0"]
    (emb_i, emb_o), (cache_i, cache_o), (lm_i, _) = (io[g] for g in SINGLE_GRAPHS)
    hidden = {io.dtype_name for io in (emb_o[0], fi[0], fo[0], cache_o[0], ni[0], no[0], lm_i[0])}
    kv = {io.dtype_name for io in (fo[1], fo[2], ni[3], ni[4], no[1], no[2])}
    if len(hidden) != 1 or not hidden <= set(FLOATS):
        return f"hidden states cross graphs in one float dtype, found {sorted(hidden)}"
    if len(kv) != 1 or not kv <= set(FLOATS):
        return f"K/V must have one float dtype in block_0 and block_cache_0, found {sorted(kv)}"
    ints = {io.dtype_name for io in (emb_i[0], cache_i[0], fi[1], ni[1])}
    if not ints <= set(INTEGERS):
        return f"ids and positions must be integers, found {sorted(ints)}"
    masks = {fi[2].dtype_name, ni[2].dtype_name}
    if not masks <= set(FLOATS):
        return f"attention masks must be floats, found {sorted(masks)}"
    return None
