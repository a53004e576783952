"""History K/V on the TPU: bmodels converted with `--use_history_kv` (tpu-mlir
`python/llm/LlmConverter.py` `gen_block_with_kv`; sophgo/LLM-TPU names the graphs `block_kv_i`)
prefill T new tokens after the P tokens a sequence already holds, with the history's K/V as
inputs, so a follow-up turn reads only what is new instead of the whole chat.

Those graphs are dynamic (sophon-sail >= 3.9 `EngineLLM.get_is_dynamic`): bmrt runs them on the
shapes of the tensors it is given, up to the compiled maximum. The inputs are made per prefill
with exactly T rows (and P history rows, copied out of the sequence's [1,L,...] cache with
sync_d2d), and the new rows' K/V are copied back into the cache at row P. A sequence's cache
is parked to host RAM (`save`) and loaded back (`restore`) as its first P rows per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgechat.engines.sail_api import DTYPE_SIZES, Io, masked_value, to_device

Process = Callable[[str, Sequence[tuple[Io, Any]], Sequence[tuple[Io, Any]]], None]


def dynamic_graphs(net: Any, names: set[str]) -> tuple[bool, bool]:
    """(block_0 is dynamic, block_kv_0 is there and dynamic too); a wheel that cannot say (< 3.9)
    has neither. A dynamic block_0 alone (`llm_convert.py --dynamic`, which Sophgo advises for
    long contexts) already prefills only the prompt's rows instead of the whole context."""
    is_dynamic = getattr(net, "get_is_dynamic", None)
    if is_dynamic is None or not is_dynamic("block_0"):
        return False, False
    return True, "block_kv_0" in names and bool(is_dynamic("block_kv_0"))


def kv_problem(first: tuple[list[Io], list[Io]], history: tuple[list[Io], list[Io]]) -> str | None:
    (fi, fo), (hi, ho) = first, history
    if len(hi) != 5 or len(ho) != 3:
        return "block_kv_0 must take (hidden, position_ids, mask, history_k, history_v) and give (hidden, k, v)"
    if hi[3].shape != fo[1].shape or ho[1].shape != fo[1].shape or hi[0].dtype_name != fi[0].dtype_name:
        return f"block_kv_0's history {hi[3].shape} does not match block_0's K/V {fo[1].shape}"
    return None


class HistoryPrefill:
    """Prefill through the dynamic block_i (P = 0) or block_kv_i (P > 0) graphs, on tensors made
    with exactly the rows fed."""

    def __init__(
        self, make: Callable[[list[int], Any], Any], first: Any, history: Any | None, hidden: int, kv_row: int
    ) -> None:
        self._make = make  # (shape, dtype) -> a device tensor; raises when the TPU has no room
        self._graphs = {"block": first, "block_kv": history or first}  # no history: past is always 0
        self.keeps_history = history is not None
        self._hidden, self._kv_row = hidden, kv_row

    def bytes_needed(self, max_len: int) -> int:
        """The largest set of per-prefill tensors (T = P = L at most)."""
        (ins, outs), L = self._graphs["block_kv"], max_len
        size = [DTYPE_SIZES.get(io.dtype_name, 4) for io in (ins[0], ins[1], ins[2], outs[1])]
        return L * self._hidden * size[0] + L * size[1] + 2 * L * L * size[2] + 4 * L * self._kv_row * size[3]

    def run(
        self, process: Process, k: Sequence[Any], v: Sequence[Any], past: int, count: int, embedded: Any, base: int = 0
    ) -> Any:
        """Feed `count` rows of `embedded` (embedding's [1,L,H] output) after `past` cached rows;
        the new rows' K/V land in the per-layer caches `k`/`v` at row `past` (of the sequence
        starting at element `base`: a batch-N bmodel's row). Returns the last layer's hidden
        states [1,count,H]."""
        kind = "block_kv" if past else "block"
        ins, outs = self._graphs[kind]
        t, h, row = count, self._hidden, self._kv_row
        hidden = self._make([1, t, h], ins[0].dtype)
        hidden.sync_d2d(embedded, 0, 0, t * h)
        positions = self._make([1, t], ins[1].dtype)
        positions.update_data(to_device(np.arange(past, past + t).reshape(1, t), ins[1].dtype))
        visible = np.tril(np.ones((t, t), dtype=bool))  # new row i sees the history and new rows 0..i
        if past:
            visible = np.concatenate([np.ones((t, past), dtype=bool), visible], axis=1)
        mask = np.where(visible, 0.0, masked_value(ins[2].dtype)).reshape(1, 1, t, past + t)
        mask_t = self._make([1, 1, t, past + t], ins[2].dtype)
        mask_t.update_data(to_device(mask, ins[2].dtype))
        kv_shape = [1, t, *outs[1].shape[2:]]
        new_k, new_v = self._make(kv_shape, outs[1].dtype), self._make(kv_shape, outs[2].dtype)
        common = [(ins[0], hidden), (ins[1], positions), (ins[2], mask_t)]
        if past:
            hist_shape = [1, past, *outs[1].shape[2:]]
            hist_k, hist_v = self._make(hist_shape, ins[3].dtype), self._make(hist_shape, ins[4].dtype)
            common += [(ins[3], hist_k), (ins[4], hist_v)]
        for i in range(len(k)):
            if past:
                hist_k.sync_d2d(k[i], base, 0, past * row)
                hist_v.sync_d2d(v[i], base, 0, past * row)
            process(f"{kind}_{i}", common, [(outs[0], hidden), (outs[1], new_k), (outs[2], new_v)])
            k[i].sync_d2d(new_k, 0, base + past * row, t * row)
            v[i].sync_d2d(new_v, 0, base + past * row, t * row)
        return hidden


def save(k: Sequence[Any], v: Sequence[Any], tokens: int, kv_row: int, base: int = 0) -> bytearray:
    """The first `tokens` rows of every layer's k and v (from element `base`), as device bytes."""
    data = bytearray()
    for tensor in (*k, *v):
        data += tensor.asnumpy().reshape(-1)[base : base + tokens * kv_row].tobytes()
    return data


def restore(k: Sequence[Any], v: Sequence[Any], data: bytes, tokens: int, kv_row: int, base: int = 0) -> bool:
    """Write `save`d rows back into every layer's k and v; False when `data` is not that size."""
    tensors = (*k, *v)
    if not tensors:
        return False
    current = [t.asnumpy() for t in tensors]
    chunk = tokens * kv_row * current[0].itemsize
    if len(data) != chunk * len(tensors) or base + tokens * kv_row > current[0].size:
        return False
    for i, (tensor, values) in enumerate(zip(tensors, current, strict=True)):
        flat = values.reshape(-1)
        flat[base : base + tokens * kv_row] = np.frombuffer(bytes(data[i * chunk : (i + 1) * chunk]), dtype=flat.dtype)
        tensor.update_data(flat.reshape(values.shape))
    return True
