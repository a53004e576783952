"""Baichuan2 bmodels on a Sophgo BM1684X TPU through `sophon.sail` (the seed's graph protocol).

A sophon-demo Baichuan2 bmodel is a set of static-shape graphs (MAX_LEN = the compiled sequence
length, H = hidden size):

    embedding [1,MAX_LEN] ids -> [1,MAX_LEN,H]        embedding_cache [1,1] id -> [1,1,H]
    block_i   (hidden, position_ids, mask [1,1,MAX_LEN,MAX_LEN]) -> (hidden, past_k, past_v)
    block_cache_i (hidden [1,1,H], position_id, mask [1,1,1,MAX_LEN+1], past_k, past_v)
              -> (hidden, present_k, present_v)
    lm_head   [1,H] -> next token id (argmax inside the graph)

The mask is additive f16 with -1000 for masked positions. `block_i` computes the whole prompt at
once, so a request always prefills its full prompt: `start()` keeps 0 cached tokens and
`prefill_chunk` is None. Each decode step runs `block_cache_i` and copies the new key/value into
the sequence's cache at row token_length-1 with `sync_d2d`.

Unlike the seed, which allocated every tensor per message, each sequence slot owns its per-layer
KV tensors, allocated once when the engine loads (`--max-sessions` slots) and reused by every
request that lands on the slot; scratch tensors are shared, since only the scheduler thread runs
the engine. Device memory is released by `close()`.

Sampling: `lm_head` returns the argmax, so this backend is greedy; temperature, top-p, top-k and
the repetition penalty of a request are ignored.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgechat.errors import ConfigError
from edgechat.tokenizers.baichuan import BaichuanTokenizer
from edgechat.types import SamplingParams

MASKED = -1000.0
INSTALL_HINT = (
    "install Sophgo's sophon-sail 3.8.0 wheel and libsophon 0.5.1 "
    "(README, section 'Running on a Sophgo TPU (BM1684X)'), or use --backend llamacpp"
)
SINGLE_GRAPHS = ("embedding", "embedding_cache", "lm_head")


@dataclass
class _Io:
    """One graph input/output: its name in the bmodel, shape and dtype, and a device tensor."""

    name: str
    shape: list[int]
    dtype: Any
    tensor: Any = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, 0)  # sail 3.8.0 keys process() tensors by (name, device index)


@dataclass
class _Slot:
    k: list[Any]  # per layer, [1, MAX_LEN, heads, head_dim] on the device
    v: list[Any]
    length: int = 0  # tokens in the cache
    busy: bool = False


def load_sail(
    bmodel: Path | None, token_dir: Path, dev_ids: Sequence[int], max_sequences: int
) -> tuple[Any, SailEngine, BaichuanTokenizer]:
    """The shared (handle, engine, tokenizer) for `--bmodel`; each bad input is one ConfigError."""
    bmodel = _check_bmodel(bmodel)
    tokenizer = BaichuanTokenizer(token_dir)
    tokenizer.check_chat_ids()
    sail = _import_sail()
    _check_dev_ids(sail, dev_ids)
    handle = sail.Handle(dev_ids[0])
    try:
        net = sail.EngineLLM(str(bmodel), list(dev_ids))
    except Exception as err:  # sail's own error classes differ between versions
        raise ConfigError(f"sophon-sail could not load {bmodel} on TPU {list(dev_ids)}: {err}") from None
    engine = SailEngine(sail, handle, net, bmodel, tokenizer.vocab_size, max_sequences, dev_ids)
    return handle, engine, tokenizer


def _check_bmodel(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("the sail backend needs --bmodel PATH (scripts/download.sh fetches models/BM1684X/*.bmodel)")
    if not path.is_file():
        raise ConfigError(f"bmodel not found: {path} — run scripts/download.sh or pass --bmodel PATH")
    return path


def _import_sail() -> Any:
    try:
        import sophon.sail as sail
    except ImportError as err:
        raise ConfigError(f"cannot import sophon.sail ({err}): {INSTALL_HINT}") from None
    return sail


def _check_dev_ids(sail: Any, dev_ids: Sequence[int]) -> None:
    """sail.Handle ends the whole process on an unknown id, so check before creating one."""
    count = int(sail.get_available_tpu_num())
    bad = [d for d in dev_ids if not 0 <= d < count]
    if not dev_ids or bad:
        have = f"TPU ids 0..{count - 1}" if count else "no TPU"
        wanted = " ".join(map(str, dev_ids))
        raise ConfigError(
            f"--dev_ids {wanted}: no TPU {bad[0] if bad else ''} here; this machine has {have} (see bm-smi)"
        )


class SailEngine:
    """The Engine contract (edgechat.engines.base) over one sail.EngineLLM; batch 1, greedy."""

    name = "sail"
    max_batch = 1
    prefill_chunk = None  # block_i takes the whole prompt in one call
    batch_prefill = False  # prompts go through prefill() one at a time, decodes through decode()
    prefix_cache = False  # block_i re-prefills whole prompts: no prefix to keep, nothing to park

    def __init__(
        self,
        sail: Any,
        handle: Any,
        net: Any,
        bmodel: Path,
        vocab_size: int,
        max_sequences: int,
        dev_ids: Sequence[int] = (0,),
    ) -> None:
        self._sail = sail
        self._handle = handle
        self._net = net
        self.model_path = str(bmodel)
        self.vocab_size = vocab_size
        self.dev_ids = tuple(dev_ids)
        self.num_layers = _count_layers(net, bmodel)
        self._first = self._graph_io("block_0")
        self._next = self._graph_io("block_cache_0")
        self.max_len, self.hidden = self._first[0][0].shape[1], self._first[0][0].shape[2]
        self._check_shapes(bmodel)
        self.max_sequences = max_sequences
        self._alloc_scratch()
        self._slots = [self._alloc_slot() for _ in range(max_sequences)]

    # ---- the Engine contract ----

    def open_sequence(self) -> int:
        for seq, slot in enumerate(self._slots):
            if not slot.busy:
                slot.busy, slot.length = True, 0
                return seq
        raise RuntimeError(f"all {len(self._slots)} TPU sequence slots are in use (--max-sessions)")

    def start(self, seq: int, sampling: SamplingParams, keep: int) -> int:
        """Always 0 kept: block_i recomputes the whole prompt, it cannot extend a cached prefix.
        `sampling` is ignored: lm_head argmaxes inside the graph."""
        self._slot(seq).length = 0
        return 0

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        slot = self._slot(seq)
        if slot.length:
            raise RuntimeError("the TPU prefill graph computes whole prompts only: start() the sequence first")
        n = len(tokens)
        if not 0 < n <= self.max_len:
            raise RuntimeError(f"prompt of {n} tokens does not fit this bmodel's {self.max_len}")
        self._run_first(slot, tokens)
        slot.length = n
        self._lm_in.tensor.sync_d2d(self._hidden, (n - 1) * self.hidden, 0, self.hidden)
        return self._lm_head()

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        return [self._decode_one(seq, token) for seq, token in batch]

    def cached_tokens(self, seq: int) -> int:
        return self._slot(seq).length

    def release(self, seq: int) -> None:
        slot = self._slot(seq)
        slot.busy, slot.length = False, 0

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_path,
            "model_name": Path(self.model_path).stem,
            "device": f"{_target(self._handle)} TPU {list(self.dev_ids)} (sophon-sail {_sail_version()})",
            "context_length": self.max_len,
            "max_sessions": self.max_sequences,
            "layers": self.num_layers,
            "hidden_size": self.hidden,
            "kv_bytes_per_session": self.kv_bytes_per_slot,
            "sampling": "greedy: lm_head returns the argmax on the TPU; temperature/top-p/top-k are not applied",
        }

    def close(self) -> None:
        """Drop every device tensor and the loaded bmodel; sail frees them with the last reference."""
        for io in [*self._scratch_io, *(io for group in (*self._first, *self._next) for io in group)]:
            io.tensor = None
        self._slots = []
        self._scratch_io = []
        self._hidden = self._next_hidden = None
        self._net = None

    # ---- setup ----

    def _graph_io(self, graph: str) -> tuple[list[_Io], list[_Io]]:
        net = self._net
        ins = [
            _Io(n, list(net.get_input_shape(graph, n)), net.get_input_dtype(graph, n))
            for n in net.get_input_names(graph)
        ]
        outs = [
            _Io(n, list(net.get_output_shape(graph, n)), net.get_output_dtype(graph, n))
            for n in net.get_output_names(graph)
        ]
        return ins, outs

    def _check_shapes(self, bmodel: Path) -> None:
        """Fail at load, in one line, on a bmodel whose graphs are not the seed's protocol."""
        problem = self._shape_problem()
        if problem:
            raise ConfigError(f"{bmodel} is not a sophon-demo Baichuan2 bmodel: {problem}")
        self.kv_row = math.prod(self._next[1][1].shape[2:])  # elements of one token's k: heads * head_dim

    def _shape_problem(self) -> str | None:
        L, H = self.max_len, self.hidden
        (fi, fo), (ni, no) = self._first, self._next
        if len(fi) != 3 or len(fo) != 3:
            return "block_0 must take (hidden, position_ids, attention_mask) and give (hidden, past_k, past_v)"
        if len(ni) != 5 or len(no) != 3:
            return "block_cache_0 must take (hidden, position_id, mask, past_k, past_v) and give (hidden, k, v)"
        if fi[0].shape != [1, L, H] or fi[1].shape != [1, L] or fi[2].shape != [1, 1, L, L]:
            return f"block_0 input shapes {[io.shape for io in fi]}, expected [1,L,H], [1,L], [1,1,L,L]"
        if ni[0].shape != [1, 1, H] or ni[2].shape != [1, 1, 1, L + 1]:
            return f"block_cache_0 input shapes {[io.shape for io in ni]}, expected [1,1,H], ..., [1,1,1,L+1]"
        cache_shape = no[1].shape[:1] + [L] + no[1].shape[2:]
        if not fo[1].shape == fo[2].shape == ni[3].shape == ni[4].shape == cache_shape:
            return f"KV cache shapes differ: block_0 gives {fo[1].shape}, block_cache_0 takes {ni[3].shape}"
        if _dtype_name(fi[2].dtype) not in ("BM_FLOAT16", "BM_FLOAT32"):
            return f"attention mask dtype {_dtype_name(fi[2].dtype)}, expected f16"
        return None

    def _tensor(self, io: _Io, shape: list[int] | None = None) -> Any:
        io.tensor = self._sail.Tensor(self._handle, shape or io.shape, io.dtype, False, True)
        return io.tensor

    def _alloc_scratch(self) -> None:
        L, H = self.max_len, self.hidden
        emb_i, emb_o = self._graph_io("embedding")
        cache_i, cache_o = self._graph_io("embedding_cache")
        lm_i, lm_o = self._graph_io("lm_head")
        self._emb_in, self._emb_out = emb_i[0], emb_o[0]
        self._cache_in, self._cache_out = cache_i[0], cache_o[0]
        self._lm_in, self._lm_out = lm_i[0], lm_o[0]
        self._tensor(self._emb_in, [1, L])
        self._hidden = self._tensor(self._emb_out, [1, L, H])  # block_i runs in place on it
        self._tensor(self._cache_in, [1, 1])
        self._next_hidden = self._tensor(self._cache_out, [1, 1, H])
        self._tensor(self._lm_in)
        self._tensor(self._lm_out)
        fi, _ = self._first
        ni, no = self._next
        for io in (fi[1], fi[2], ni[1], ni[2], no[1], no[2]):
            self._tensor(io)
        self._scratch_io = [self._emb_in, self._emb_out, self._cache_in, self._cache_out, self._lm_in, self._lm_out]
        self._np_ids = _numpy_dtype(self._emb_in.dtype, "embedding input")
        self._np_pos = _numpy_dtype(fi[1].dtype, "position_ids")
        self._np_mask = _numpy_dtype(fi[2].dtype, "attention_mask")

    def _alloc_slot(self) -> _Slot:
        _, fo = self._first
        shape_k, shape_v = fo[1].shape, fo[2].shape
        try:
            k = [self._sail.Tensor(self._handle, shape_k, fo[1].dtype, False, True) for _ in range(self.num_layers)]
            v = [self._sail.Tensor(self._handle, shape_v, fo[2].dtype, False, True) for _ in range(self.num_layers)]
        except (RuntimeError, MemoryError) as err:
            raise ConfigError(
                f"TPU memory: cannot hold KV caches for --max-sessions {self.max_sequences} "
                f"({self.kv_bytes_per_slot >> 20} MiB each): {err}; lower --max-sessions"
            ) from None
        return _Slot(k, v)

    @property
    def kv_bytes_per_slot(self) -> int:
        _, fo = self._first
        return 2 * self.num_layers * math.prod(fo[1].shape) * _dtype_size(fo[1].dtype)

    @property
    def kv_bytes_per_token(self) -> int:
        """For `--kv-budget` in MiB (slots are allocated whole, so the budget counts idle slots)."""
        return self.kv_bytes_per_slot // self.max_len

    # ---- the graphs ----

    def _slot(self, seq: int) -> _Slot:
        if not 0 <= seq < len(self._slots):
            raise RuntimeError(f"no sequence slot {seq}")
        return self._slots[seq]

    def _run_first(self, slot: _Slot, tokens: Sequence[int]) -> None:
        """embedding + block_i over the whole prompt, padded to MAX_LEN; k/v land in the slot."""
        L, n = self.max_len, len(tokens)
        ids = np.zeros((1, L), dtype=self._np_ids)
        ids[0, :n] = tokens
        positions = np.zeros((1, L), dtype=self._np_pos)
        positions[0, :n] = np.arange(n)
        mask = np.full((L, L), MASKED, dtype=self._np_mask)
        mask[np.tril_indices(n)] = 0
        self._emb_in.tensor.update_data(ids)
        self._process("embedding", [self._emb_in], [self._emb_out])
        fi, fo = self._first
        self._hidden.reshape(fi[0].shape)
        fi[1].tensor.update_data(positions)
        fi[2].tensor.update_data(mask.reshape(fi[2].shape))
        for i in range(self.num_layers):
            self._net.process(
                f"block_{i}",
                {fi[0].key: self._hidden, fi[1].key: fi[1].tensor, fi[2].key: fi[2].tensor},
                {fo[0].key: self._hidden, fo[1].key: slot.k[i], fo[2].key: slot.v[i]},
            )

    def _decode_one(self, seq: int, token: int) -> int:
        """embedding_cache + block_cache_i for one token at row `length`; returns the next id."""
        slot = self._slot(seq)
        n = slot.length + 1  # the seed's token_length: tokens in the cache once this one is in
        if slot.length == 0 or n > self.max_len:
            raise RuntimeError(f"sequence {seq} holds {slot.length} of {self.max_len} tokens: cannot decode")
        self._cache_in.tensor.update_data(np.array([[token]], dtype=self._np_ids))
        self._process("embedding_cache", [self._cache_in], [self._cache_out])
        ni, no = self._next
        mask = np.zeros(self.max_len + 1, dtype=self._np_mask)
        mask[n - 1 : self.max_len] = MASKED
        ni[1].tensor.update_data(np.array([n - 1], dtype=self._np_pos).reshape(ni[1].shape))
        ni[2].tensor.update_data(mask.reshape(ni[2].shape))
        self._next_hidden.reshape(ni[0].shape)
        row = (n - 1) * self.kv_row
        for i in range(self.num_layers):
            self._net.process(
                f"block_cache_{i}",
                {
                    ni[0].key: self._next_hidden,
                    ni[1].key: ni[1].tensor,
                    ni[2].key: ni[2].tensor,
                    ni[3].key: slot.k[i],
                    ni[4].key: slot.v[i],
                },
                {no[0].key: self._next_hidden, no[1].key: no[1].tensor, no[2].key: no[2].tensor},
            )
            slot.k[i].sync_d2d(no[1].tensor, 0, row, self.kv_row)
            slot.v[i].sync_d2d(no[2].tensor, 0, row, self.kv_row)
        slot.length = n
        self._lm_in.tensor.sync_d2d(self._next_hidden, 0, 0, self.hidden)
        return self._lm_head()

    def _lm_head(self) -> int:
        self._process("lm_head", [self._lm_in], [self._lm_out])
        token = int(self._lm_out.tensor.asnumpy().reshape(-1)[0])
        if not 0 <= token < self.vocab_size:
            raise ConfigError(
                f"the bmodel produced token id {token}, outside the tokenizer's vocabulary of {self.vocab_size}: "
                f"--token does not belong to --bmodel {self.model_path}"
            )
        return token

    def _process(self, graph: str, ins: Sequence[_Io], outs: Sequence[_Io]) -> None:
        self._net.process(graph, {io.key: io.tensor for io in ins}, {io.key: io.tensor for io in outs})


def _count_layers(net: Any, bmodel: Path) -> int:
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
            f"{bmodel} lacks the graphs of a Baichuan2 bmodel: missing {', '.join(missing)} (has {found})"
        )
    return layers


_NUMPY_DTYPES = {"BM_FLOAT32": np.float32, "BM_FLOAT16": np.float16, "BM_INT32": np.int32, "BM_UINT32": np.uint32}
_DTYPE_SIZES = {
    "BM_FLOAT32": 4,
    "BM_FLOAT16": 2,
    "BM_BFLOAT16": 2,
    "BM_INT32": 4,
    "BM_UINT32": 4,
    "BM_INT16": 2,
    "BM_UINT16": 2,
    "BM_INT8": 1,
    "BM_UINT8": 1,
}


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]


def _numpy_dtype(dtype: Any, what: str) -> Any:
    name = _dtype_name(dtype)
    if name not in _NUMPY_DTYPES:
        raise ConfigError(f"the bmodel's {what} has dtype {name}; this backend feeds f16/f32 masks and int32 ids")
    return _NUMPY_DTYPES[name]


def _dtype_size(dtype: Any) -> int:
    return _DTYPE_SIZES.get(_dtype_name(dtype), 2)


def _target(handle: Any) -> str:
    """The chip name (BM1684X); older sail builds lack Handle.get_target."""
    get_target = getattr(handle, "get_target", None)
    return str(get_target()) if get_target is not None else "Sophgo"


def _sail_version() -> str:
    try:
        return importlib.metadata.version("sophon")
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"
