"""TEST DOUBLE, emulator-only: a timing model, so a room can be sized without a BM1684X. Off unless
`set_timing(...)` is called; then every `EngineLLM.process` adds its graph's simulated latency to
`BUSY[dev_id]` (seconds of that TPU's time) and nothing waits: the time is simulated, not slept.

The model, per graph, as a function of its shapes (the emulated bmodel stands in for a real one of
the same graphs: its MAX_LEN and layer count play the real bmodel's):
- `block_i` / `block_kv_i` over T token rows: ftl_s * T / seq_len / layers, seq_len the real
  bmodel's compiled length (default: the emulated MAX_LEN). A static block_i computes all its
  rows, so one prefill of any prompt costs ftl_s, the published first-token time; a dynamic graph
  (history K/V) costs its share of the real length's rows. Attention over P history rows is
  not charged (the MLP and projections dominate at these lengths: an assumption).
- `block_cache_i` for N sequences: (1 / tok_s) / layers * (1 + batch_cost * (N - 1)): one
  stream decodes at the published tok/s; each further sequence of a batch adds `batch_cost` of a
  step, because decode is bound by reading the weights, which a batch reads once (an assumption
  that only real hardware can confirm; default 0.1).
- embedding, embedding_cache, lm_head, the heads and the host copies: folded into the above (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUSY: dict[int, float] = {}  # TPU id -> simulated seconds it has computed


@dataclass(frozen=True)
class Timing:
    ftl_s: float  # first-token time of one stream (a whole prefill)
    tok_s: float  # decode tokens per second of one stream
    batch_cost: float = 0.1  # share of a decode step each further sequence of a batch adds
    seq_len: int | None = None  # the real bmodel's compiled length (None: the emulated MAX_LEN)


_timing: Timing | None = None


def set_timing(timing: Timing | None) -> None:
    """Turn the timing model on (a Timing) or off (None); BUSY starts from zero."""
    global _timing
    _timing = timing
    BUSY.clear()


def charge(dev_id: int, spec: Any, kind: str, shapes_in: list[list[int]]) -> None:
    """Add the simulated latency of one graph call on `dev_id`."""
    if _timing is None:
        return
    t = _timing
    if kind in ("block", "block_kv"):
        rows = shapes_in[0][1]
        share = 1.0 if rows == spec.max_len and kind == "block" else rows / (t.seq_len or spec.max_len)
        seconds = t.ftl_s * share / spec.layers
    elif kind == "block_cache":
        seconds = (1.0 / t.tok_s) / spec.layers * (1.0 + t.batch_cost * (shapes_in[0][0] - 1))
    else:
        seconds = 0.0
    BUSY[dev_id] = BUSY.get(dev_id, 0.0) + seconds
