"""Sophgo bmodels on a BM1684X TPU through `sophon.sail`: the seed's Baichuan2 and sophgo/LLM-TPU's
Qwen2.5 / Qwen3 / DeepSeek-R1-Distill / Llama share one graph protocol (MAX_LEN = the compiled
sequence length, H = hidden size; sophon-demo `sample/Baichuan2/tools/export_onnx.py`, tpu-mlir
`python/llm/LlmConverter.py`):

    embedding [1,MAX_LEN] ids -> [1,MAX_LEN,H]        embedding_cache [1,1] id -> [1,1,H]
    block_i   (hidden, position_ids, mask [1,1,MAX_LEN,MAX_LEN]) -> (hidden, past_k, past_v)
    block_cache_i (hidden [1,1,H], position_id, mask [1,1,1,MAX_LEN+1], past_k, past_v)
              -> (hidden, present_k, present_v)
    lm_head   [1,H] -> next token id, or logits (sail_heads)

What differs is read from the graphs, never from the file name: dtypes (Baichuan2 keeps hidden
states and the mask in F32, K/V in F16 or BF16; LLM-TPU bmodels carry all of them in F16 or BF16,
masks as their bit patterns), grouped K/V heads (shapes), the heads (sail_heads) and history K/V
(`block_kv_i`, sail_history). Without block_kv_i a request prefills its whole prompt (`start()`
keeps 0, `prefix_cache` False); with it a follow-up turn feeds only its new tokens and an idle
session's cache is kept, parked to host RAM and restored by the scheduler. Each decode step runs
`block_cache_i` and copies the new key/value into the cache at row token_length-1 (`sync_d2d`).

Each KV slot owns its per-layer K/V tensors, allocated once at load (`--max-running` slots), not
per message as in the seed; TPU memory is checked before and every allocation after (sail_memory).
Scratch tensors are shared: only the scheduler thread runs the engine. Sampling: a bmodel with
`sample_head` applies a request's temperature, top-p, top-k and repetition penalty; otherwise
the argmax is taken and describe() says sampling is fixed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgechat.engines.sail_api import (
    ChipError,
    GraphApi,
    Io,
    check_dev_ids,
    detect_release,
    device_memory_mib,
    first_line,
    import_sail,
    masked_value,
    to_device,
)
from edgechat.engines.sail_batch import copy_rows, decode_batches, decode_one
from edgechat.engines.sail_bmodel import SINGLE_GRAPHS, check_protocol, count_layers
from edgechat.engines.sail_heads import Draw, Heads
from edgechat.engines.sail_history import HistoryPrefill, dynamic_graphs, kv_problem, restore, save
from edgechat.engines.sail_memory import allocated, shortfall, target
from edgechat.errors import ConfigError
from edgechat.stats import ChipLoad, EngineTimings
from edgechat.types import SamplingParams

log = logging.getLogger(__name__)

MIB = 1 << 20
SPARE_MIB = 16  # kept free beyond the exact need: allocator alignment and what get_dev_stat rounds away
DEFAULT_SLOTS = 2  # --max-running unset: decode is batch 1, more slots add no speed, each costs K/V memory
DEFAULT_PROMPT_SHARE = 0.5  # the seed keeps prompts <= MAX_LEN / 2 so answers have room


@dataclass
class _Slot:
    k: list[Any]  # per layer, [1, MAX_LEN, heads, head_dim] on the device
    v: list[Any]
    length: int = 0  # tokens in the cache
    row: int = 0  # its sequence in k/v: 0, or its row of a batch-N bmodel's shared [N, MAX_LEN, ...] tensors
    busy: bool = False
    draw: Draw = field(default_factory=Draw)  # sampling state, for a bmodel with sample_head


def load_sail(
    bmodel: Path,
    vocab_size: int,
    dev_ids: Sequence[int],
    slots: int,
    max_prompt_share: float = DEFAULT_PROMPT_SHARE,
) -> tuple[Any, SailEngine]:
    """The shared (handle, engine) for `--bmodel` (checked with `check_bmodel` first) with `slots`
    KV slots (`--max-running`); each bad input is one ConfigError."""
    sail = import_sail()
    check_dev_ids(sail, dev_ids)
    handle = sail.Handle(dev_ids[0])
    try:
        net = sail.EngineLLM(str(bmodel), list(dev_ids))
    except Exception as err:  # sail's own error classes differ between versions
        raise ChipError(f"sophon-sail could not load {bmodel} on TPU {list(dev_ids)}: {first_line(err)}") from None
    try:
        engine = SailEngine(sail, handle, net, bmodel, vocab_size, slots, dev_ids, max_prompt_share)
    except ConfigError as err:
        refused = str(err)
    else:
        return handle, engine
    net = handle = None  # the traceback is gone: the bmodel and any tensor leave the TPU now
    raise ConfigError(refused)


class SailEngine:
    """The Engine contract (edgechat.engines.base) over one sail.EngineLLM; batch 1, greedy."""

    name = "sail"
    max_batch = 1
    prefill_chunk = None  # block_i takes the whole prompt in one call
    batch_prefill = False  # prompts go through prefill() one at a time, decodes through decode()
    prefix_cache = False  # block_i re-prefills whole prompts: no prefix to keep, nothing to park
    logprobs = False  # the bmodel's lm_head returns the argmax id only, not the logits
    grammar = False  # ... so nothing can mask the logits either
    carries_sampling = True  # a slot's Draw (seeded generator, penalty window) travels with a sliced answer

    def __init__(
        self,
        sail: Any,
        handle: Any,
        net: Any,
        bmodel: Path,
        vocab_size: int,
        slots: int,
        dev_ids: Sequence[int] = (0,),
        max_prompt_share: float = DEFAULT_PROMPT_SHARE,
    ) -> None:
        self._sail, self._handle, self._net = sail, handle, net
        self.model_path, self.vocab_size, self.dev_ids = str(bmodel), vocab_size, tuple(dev_ids)
        self.num_layers = count_layers(net, bmodel)
        self.release_info = detect_release(net, "block_0")
        self._api = GraphApi(net, self.release_info)
        names = set(net.get_graph_names())
        heads = [g for g in ("greedy_head", "sample_head") if g in names]
        self._io = {g: self._read_graph(g, bmodel) for g in (*SINGLE_GRAPHS, "block_0", "block_cache_0", *heads)}
        self._heads = Heads(self._io)
        self._first, self._next = self._io["block_0"], self._io["block_cache_0"]
        hidden_shape = self._first[0][0].shape
        if len(hidden_shape) != 3:
            raise ConfigError(f"{bmodel} is not a sophon-demo Baichuan2 bmodel: block_0 takes {hidden_shape}")
        self.max_len, self.hidden = hidden_shape[1], hidden_shape[2]
        self._check_protocol(bmodel)
        self._history = self._history_prefill(net, names, bmodel)
        self.prefix_cache = self._history is not None and self._history.keeps_history  # follow-ups extend it
        self.max_batch = self.batch = self._next[0][0].shape[0]  # sequences one decode step takes
        self.max_sequences = -(-slots // self.batch) * self.batch  # whole batches
        # Answer room, as the seed keeps it: history is trimmed until the prompt fits this.
        self.max_prompt_len = max(1, min(self.max_len - 1, int(self.max_len * max_prompt_share)))
        self._slots: list[_Slot] = []
        self._scratch: list[Io] = []
        self._allocate()

    # ---- the Engine contract ----

    def open_sequence(self) -> int:
        for seq, slot in enumerate(self._slots):
            if not slot.busy:
                slot.busy, slot.length = True, 0
                return seq
        raise RuntimeError(f"all {len(self._slots)} TPU KV slots are in use (--max-running)")

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: Draw | None = None) -> int:
        """0 kept unless the bmodel has history K/V (block_kv_i): a static block_i recomputes the
        whole prompt. `sampling` is used by a sample_head only (else the argmax is taken);
        `carried`: a time-sliced answer's own Draw, going on where it was."""
        slot = self._slot(seq)
        slot.length = min(keep, slot.length) if self.prefix_cache else 0
        if carried is not None:
            slot.draw = carried
        else:
            slot.draw.start(sampling, slot.length)
        return slot.length

    def take_sampling(self, seq: int) -> Draw:
        slot = self._slot(seq)
        carried, slot.draw = slot.draw, Draw()
        return carried

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        slot = self._slot(seq)
        if self._history is not None:
            return self._prefill_history(slot, tokens)
        if slot.length:
            raise RuntimeError("the TPU prefill graph computes whole prompts only: start() the sequence first")
        n = len(tokens)
        if not 0 < n <= self.max_len:
            raise RuntimeError(f"prompt of {n} tokens does not fit this bmodel's {self.max_len}")
        self._run_first(slot, tokens)
        slot.length = n
        slot.draw.ids += tokens
        self._lm_in.tensor.sync_d2d(self._hidden.tensor, (n - 1) * self.hidden, 0, self.hidden)
        return self._lm_head(slot.draw)

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        if self.batch > 1:
            return decode_batches(self, [(self._slot(seq), token) for seq, token in batch])
        return [decode_one(self, self._slot(seq), token) for seq, token in batch]

    def save(self, seq: int) -> bytearray:
        slot = self._slot(seq)
        return save(slot.k, slot.v, slot.length, self.kv_row, self._base(slot))

    def restore(self, seq: int, data: bytearray, tokens: int) -> bool:
        slot = self._slot(seq)
        if not self.prefix_cache or slot.length or not 0 < tokens <= self.max_len:
            return False
        slot.length = tokens if restore(slot.k, slot.v, data, tokens, self.kv_row, self._base(slot)) else 0
        return slot.length > 0

    def copy(self, seq: int, source: int) -> bool:
        """`source`'s cache into the open, empty `seq` (a prompt prefix shared across sessions)."""
        return self.prefix_cache and self.restore(seq, self.save(source), self._slot(source).length)

    def cached_tokens(self, seq: int) -> int:
        return self._slot(seq).length

    def release(self, seq: int) -> None:
        slot = self._slot(seq)
        slot.busy, slot.length = False, 0

    def describe(self) -> dict[str, Any]:
        kv = self._first[1][1].dtype_name.removeprefix("BM_")
        return {
            "backend": self.name,
            "model": self.model_path,
            "model_name": Path(self.model_path).stem,
            "device": f"{target(self._handle)} TPU {list(self.dev_ids)} · {self.release_info.describe()} · K/V {kv}",
            "sail_version": self.release_info.version,
            "context_length": self.max_len,
            "max_prompt_len": self.max_prompt_len,
            "kv_slots": self.max_sequences,
            "layers": self.num_layers,
            "hidden_size": self.hidden,
            "kv_dtype": kv,
            "kv_bytes_per_session": self.kv_bytes_per_slot,
            "tpu_memory_bytes": self.device_bytes_needed,
            "sampling": self._heads.sampling(),
            "sampling_fixed": self._heads.fixed,
        }

    def timings(self) -> EngineTimings | None:
        return None  # the step's time is the graphs'; sail reports no finer split

    def chip_load(self) -> tuple[ChipLoad, ...]:
        return ()  # one engine per TPU: ChipsEngine reports each

    def close(self) -> None:
        """Drop every device tensor and the loaded bmodel; sail frees them with the last reference."""
        self._free()
        self._net = self._api.net = None

    # ---- setup ----

    def _read_graph(self, graph: str, bmodel: Path) -> tuple[list[Io], list[Io]]:
        try:
            return self._api.io(graph)
        except Exception as err:  # noqa: BLE001 — a wheel of another generation than detected
            raise ConfigError(
                f"{self.release_info.describe()} does not answer EngineLLM's graph queries for {bmodel.name} "
                f"({first_line(err)}); edgechat speaks sail 3.8 (name-keyed) and >= 3.9 (index-keyed)"
            ) from None

    def _history_prefill(self, net: Any, names: set[str], bmodel: Path) -> HistoryPrefill | None:
        dynamic, history = dynamic_graphs(net, names)
        if not dynamic:
            if "block_kv_0" in names:
                log.warning("%s has block_kv graphs, but this sophon-sail cannot run them dynamic (>= 3.9 can)", bmodel)
            return None
        if history:
            self._io["block_kv_0"] = self._read_graph("block_kv_0", bmodel)
            problem = kv_problem(self._first, self._io["block_kv_0"])
            if problem:
                raise ConfigError(f"{bmodel}: {problem}")
        return HistoryPrefill(self._transient, self._first, self._io.get("block_kv_0"), self.hidden, self.kv_row)

    def _check_protocol(self, bmodel: Path) -> None:
        check_protocol(self._io, self.dev_ids, bmodel, self._heads.problem())
        self.kv_row = math.prod(self._next[1][1].shape[2:])  # elements of one token's k: heads * head_dim

    @property
    def kv_bytes_per_slot(self) -> int:
        _, fo = self._first
        return self.num_layers * (fo[1].nbytes + fo[2].nbytes)

    @property
    def kv_bytes_per_token(self) -> int:
        """For `--kv-budget` in MiB (slots are allocated whole)."""
        return self.kv_bytes_per_slot // self.max_len

    @property
    def device_bytes_needed(self) -> int:
        """What `_allocate` takes from the TPU: every slot's K/V plus the shared scratch tensors."""
        return self.max_sequences * self.kv_bytes_per_slot + sum(io.nbytes for io in self._scratch_plan())

    def _scratch_plan(self) -> list[Io]:
        (fi, _), (ni, no) = self._first, self._next
        (emb_i, emb_o), (cache_i, cache_o), (lm_i, lm_o) = (self._io[g] for g in SINGLE_GRAPHS)
        plan = [emb_i[0], emb_o[0], cache_i[0], cache_o[0], lm_i[0], lm_o[0], fi[1], fi[2], ni[1], ni[2], no[1], no[2]]
        prefill_kv = list(self._first[1][1:]) if self.batch > 1 else []  # block_i's K/V, copied to a batch row
        return plan + self._heads.plan() + prefill_kv

    def _allocate(self) -> None:
        """All device tensors, once: check the TPU can hold them, allocate, verify, or refuse."""
        transient = self._history.bytes_needed(self.max_len) if self._history is not None else 0
        need_mib = -(-(self.device_bytes_needed + transient) // MIB) + SPARE_MIB
        dev = self.dev_ids[0]
        before = device_memory_mib(self._sail, dev)
        if before is not None and need_mib > before[0] - before[1]:
            raise ConfigError(shortfall(self, need_mib, before[0] - before[1]))
        plan = self._scratch_plan()
        for io in plan:
            io.tensor = self._tensor(io)
        self._scratch = plan
        kv = self._next[0][3:5] if self.batch > 1 else self._first[1][1:]  # [N, MAX_LEN, ...] or [1, ...]
        for _ in range(self.max_sequences // self.batch):
            k = [self._tensor(kv[0]) for _ in range(self.num_layers)]
            v = [self._tensor(kv[1]) for _ in range(self.num_layers)]
            self._slots += [_Slot(k, v, row=row) for row in range(self.batch)]
        tensors = [io.tensor for io in self._scratch] + [t for s in self._slots for t in (*s.k, *s.v)]
        if not allocated(self._sail, dev, list({id(t): t for t in tensors}.values()), before, self.device_bytes_needed):
            after = device_memory_mib(self._sail, dev)
            self._free()
            free = "unknown" if before is None else before[0] - before[1]
            raise ConfigError(shortfall(self, need_mib, free, after=after))
        (fi, _), (ni, _) = self._first, self._next
        self._hidden, self._next_hidden = plan[1], plan[3]  # block_i / block_cache_i run in place on them
        self._emb_in, self._cache_in, self._lm_in, self._lm_out = plan[0], plan[2], plan[4], plan[5]
        self._positions, self._mask, self._next_position, self._next_mask = fi[1], fi[2], ni[1], ni[2]

    def _tensor(self, io: Io) -> Any:
        return self._sail.Tensor(self._handle, io.shape, io.dtype, False, True)

    def _transient(self, shape: list[int], dtype: Any) -> Any:
        """A tensor for one prefill; refused (this request fails, others go on) when sail could
        not allocate it. Only the >= 3.9 wheels that run dynamic graphs get here."""
        tensor = self._sail.Tensor(self._handle, shape, dtype, False, True)
        if not tensor.is_dev_data_valid():
            raise RuntimeError(f"the TPU has no room for a {shape} prefill tensor now")
        return tensor

    def _free(self) -> None:
        for ins, outs in self._io.values():
            for io in (*ins, *outs):
                io.tensor = None
        self._slots = []
        self._scratch = []

    # ---- the graphs ----

    def _slot(self, seq: int) -> _Slot:
        if not 0 <= seq < len(self._slots):
            raise RuntimeError(f"no sequence slot {seq}")
        return self._slots[seq]

    def _process(self, graph: str, ins: Sequence[tuple[Io, Any]], outs: Sequence[tuple[Io, Any]]) -> None:
        self._api.process(graph, {io.key: t for io, t in ins}, {io.key: t for io, t in outs})

    def _embed(self, tokens: Sequence[int]) -> None:
        """embedding over `tokens` padded to MAX_LEN, into the shared hidden-states tensor."""
        ids = np.zeros((1, self.max_len), dtype=np.int64)
        ids[0, : len(tokens)] = tokens
        self._emb_in.tensor.update_data(to_device(ids, self._emb_in.dtype))
        emb_o = self._io["embedding"][1][0]
        self._process("embedding", [(self._io["embedding"][0][0], self._emb_in.tensor)], [(emb_o, self._hidden.tensor)])

    def _prefill_history(self, slot: _Slot, tokens: Sequence[int]) -> int:
        """The new tokens only, after the slot's cached ones (dynamic block_i / block_kv_i)."""
        past, n = slot.length, len(tokens)
        if not 0 < n or past + n > self.max_len:
            raise RuntimeError(f"{past} cached + {n} new tokens do not fit this bmodel's {self.max_len}")
        self._embed(tokens)
        hidden = self._history.run(self._process, slot.k, slot.v, past, n, self._hidden.tensor, self._base(slot))  # type: ignore[union-attr]
        slot.length = past + n
        slot.draw.ids += tokens
        self._lm_in.tensor.sync_d2d(hidden, (n - 1) * self.hidden, 0, self.hidden)
        return self._lm_head(slot.draw)

    def _base(self, slot: _Slot) -> int:
        """Where the slot's sequence starts in its K/V tensors (a batch-N bmodel's row)."""
        return slot.row * self.max_len * self.kv_row

    def _run_first(self, slot: _Slot, tokens: Sequence[int]) -> None:
        """embedding + block_i over the whole prompt, padded to MAX_LEN; k/v land in the slot."""
        L, n = self.max_len, len(tokens)
        positions = np.zeros((1, L), dtype=np.int64)
        positions[0, :n] = np.arange(n)
        mask = np.full((L, L), masked_value(self._mask.dtype))
        mask[np.tril_indices(n)] = 0.0  # rows past the prompt stay fully masked, as the seed's
        self._embed(tokens)
        fi, fo = self._first
        hidden = self._hidden.tensor
        hidden.reshape(fi[0].shape)
        self._positions.tensor.update_data(to_device(positions, self._positions.dtype))
        self._mask.tensor.update_data(to_device(mask.reshape(fi[2].shape), self._mask.dtype))
        ins = [(fi[0], hidden), (fi[1], self._positions.tensor), (fi[2], self._mask.tensor)]
        for i in range(self.num_layers):
            if self.batch == 1:
                self._process(f"block_{i}", ins, [(fo[0], hidden), (fo[1], slot.k[i]), (fo[2], slot.v[i])])
            else:  # block_i fills one sequence's K/V; it goes to the slot's row of the batch tensors
                self._process(f"block_{i}", ins, [(fo[0], hidden), (fo[1], fo[1].tensor), (fo[2], fo[2].tensor)])
                copy_rows(slot, i, fo[1].tensor, fo[2].tensor, n, L * self.kv_row, self.kv_row)

    def _lm_head(self, draw: Draw) -> int:
        return self._checked(self._heads.token(self._process, draw))

    def _checked(self, token: int) -> int:
        if not 0 <= token < self.vocab_size:
            raise ConfigError(
                f"the bmodel produced token id {token}, outside the tokenizer's vocabulary of {self.vocab_size}: "
                f"--token does not belong to --bmodel {self.model_path}"
            )
        return token
