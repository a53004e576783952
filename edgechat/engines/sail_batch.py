"""Decode steps of the sail engine: one sequence per call (batch 1), and batched decode for
bmodels whose decode graphs take N sequences (`llm_convert.py -b N`; sophgo/LLM-TPU
`models/Qwen3_VL/python_demo_multibatch`): N is block_cache_0's input dim 0, read from the shapes.
Each layer's K/V is one [N, MAX_LEN, kv_heads, head_dim] tensor shared by N slots (one row each);
prefill stays one sequence at a time (block_i is batch 1) and its K/V is copied into the slot's
row. A decode step runs embedding_cache, every block_cache_i and lm_head once for
up to N running sequences of one batch; rows without a running sequence are padded (token 0 at
position 0, everything but its own token masked) and their outputs are not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgechat.engines.sail_api import masked_value, to_device


def copy_rows(slot: Any, layer: int, k: Any, v: Any, rows: int, row_stride: int, kv_row: int) -> None:
    """The first `rows` token rows of one sequence's k/v (block_i's [1, MAX_LEN, ...] output, or a
    block_cache's new row) into `slot`'s row of the batch tensors of `layer`."""
    offset = slot.row * row_stride
    slot.k[layer].sync_d2d(k, 0, offset, rows * kv_row)
    slot.v[layer].sync_d2d(v, 0, offset, rows * kv_row)


def decode_one(e: Any, slot: Any, token: int) -> int:
    """Batch 1: embedding_cache + block_cache_i for one token at row `length` of the slot's own
    K/V; the next id through the bmodel's heads (greedy or its sample_head)."""
    n = slot.length + 1  # the seed's token_length: tokens in the cache once this one is in
    if slot.length == 0 or n > e.max_len:
        raise RuntimeError(f"a sequence holds {slot.length} of {e.max_len} tokens: cannot decode")
    e._cache_in.tensor.update_data(to_device(np.array([[token]]), e._cache_in.dtype))
    cache_i, cache_o = e._io["embedding_cache"]
    hidden = e._next_hidden.tensor
    e._process("embedding_cache", [(cache_i[0], e._cache_in.tensor)], [(cache_o[0], hidden)])
    ni, no = e._next
    mask = np.zeros(e.max_len + 1)
    mask[n - 1 : e.max_len] = masked_value(e._next_mask.dtype)
    position = np.array([n - 1]).reshape(ni[1].shape)
    e._next_position.tensor.update_data(to_device(position, e._next_position.dtype))
    e._next_mask.tensor.update_data(to_device(mask.reshape(ni[2].shape), e._next_mask.dtype))
    hidden.reshape(ni[0].shape)
    k_new, v_new = e._next[1][1].tensor, e._next[1][2].tensor
    ins_common = [(ni[0], hidden), (ni[1], e._next_position.tensor), (ni[2], e._next_mask.tensor)]
    row = (n - 1) * e.kv_row
    for i in range(e.num_layers):
        ins = [*ins_common, (ni[3], slot.k[i]), (ni[4], slot.v[i])]
        e._process(f"block_cache_{i}", ins, [(no[0], hidden), (no[1], k_new), (no[2], v_new)])
        slot.k[i].sync_d2d(k_new, 0, row, e.kv_row)
        slot.v[i].sync_d2d(v_new, 0, row, e.kv_row)
    slot.length = n
    slot.draw.ids.append(token)
    e._lm_in.tensor.sync_d2d(hidden, 0, 0, e.hidden)
    return e._lm_head(slot.draw)


def decode_batches(engine: Any, feeds: Sequence[tuple[Any, int]]) -> list[int]:
    """One graph call per batch (slots sharing K/V tensors) for the (slot, token) feeds; the next
    ids in the feeds' order."""
    groups: dict[int, list[int]] = {}
    for i, (slot, _) in enumerate(feeds):
        groups.setdefault(id(slot.k[0]), []).append(i)
    out = [0] * len(feeds)
    for indices in groups.values():
        for i, token in zip(indices, _decode_group(engine, [feeds[i] for i in indices]), strict=True):
            out[i] = token
    return out


def _decode_group(engine: Any, feeds: Sequence[tuple[Any, int]]) -> list[int]:
    e = engine
    B, L, H, row = e.batch, e.max_len, e.hidden, e.kv_row
    ids, positions = np.zeros((B, 1), dtype=np.int64), np.zeros((B, 1), dtype=np.int64)
    mask = np.full((B, L + 1), masked_value(e._next_mask.dtype))
    mask[:, L] = 0.0  # every row sees its own token (a padded row only that)
    for slot, token in feeds:
        n = slot.length + 1
        if slot.length == 0 or n > L:
            raise RuntimeError(f"a sequence holds {slot.length} of {L} tokens: cannot decode")
        ids[slot.row, 0], positions[slot.row, 0] = token, n - 1
        mask[slot.row, : n - 1] = 0.0
    ni, no = e._next
    cache_i, cache_o = e._io["embedding_cache"]
    hidden = e._next_hidden.tensor
    e._cache_in.tensor.update_data(to_device(ids, e._cache_in.dtype))
    e._process("embedding_cache", [(cache_i[0], e._cache_in.tensor)], [(cache_o[0], hidden)])
    e._next_position.tensor.update_data(to_device(positions.reshape(ni[1].shape), e._next_position.dtype))
    e._next_mask.tensor.update_data(to_device(mask.reshape(ni[2].shape), e._next_mask.dtype))
    hidden.reshape(ni[0].shape)
    k_new, v_new = no[1].tensor, no[2].tensor
    common = [(ni[0], hidden), (ni[1], e._next_position.tensor), (ni[2], e._next_mask.tensor)]
    slots = [slot for slot, _ in feeds]
    k, v = slots[0].k, slots[0].v
    for i in range(e.num_layers):
        ins = [*common, (ni[3], k[i]), (ni[4], v[i])]
        e._process(f"block_cache_{i}", ins, [(no[0], hidden), (no[1], k_new), (no[2], v_new)])
        for slot in slots:  # this token's k/v: row slot.row of the output, at row `length` of its cache
            dst = (slot.row * L + slot.length) * row
            k[i].sync_d2d(k_new, slot.row * row, dst, row)
            v[i].sync_d2d(v_new, slot.row * row, dst, row)
    e._lm_in.tensor.sync_d2d(hidden, 0, 0, B * H)
    lm_i, lm_o = e._heads.lm_in, e._heads.lm_out
    e._process("lm_head", [(lm_i, lm_i.tensor)], [(lm_o, lm_o.tensor)])
    rows = e._heads.rows(B)
    tokens = []
    for slot, token in feeds:
        slot.length += 1
        slot.draw.ids.append(token)
        tokens.append(e._checked(rows[slot.row]))
    return tokens
