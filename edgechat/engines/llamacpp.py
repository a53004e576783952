"""GGUF on CPU/ARM through llama-cpp-python's low-level API: one context, many sequences.

The high-level `Llama` class holds one sequence per context, so the context is built directly
with `n_seq_max` sequences, each with its own KV buffer. Two steps: `LlamaCppModel` loads the
weights and tells what a cached token costs; the KV layout is computed from that (edgechat.room)
and `LlamaCppEngine` creates the context with it. Every
step fills ONE `llama_batch` with the running sequences' next tokens and the prompt chunks of
newcomers and calls `llama_decode` once. A greedy sequence's next token is the argmax of its
logits row (numpy, no sampler call); other sequences use llama.cpp's sampler chain, one per
sequence, with its grammar sampler for structured output (edgechat.engines.sampling).
A sequence's cache is copied to host RAM and back with `llama_state_seq_get_data_ext` /
`llama_state_seq_set_data_ext`, as llama-server's prompt cache does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ggml's CPU threads meet at OpenMP barriers many times per token; by default a waiting thread
# spins. On an edge box the page, Streamlit and browsers share the cores, and a spinning thread
# whose partner was descheduled burns its time slice: measured here with other work on the 2
# cores, 16 sequences decoded 46-70 tok/s spinning against 136-140 with passive waiting (and
# ~10 % less when the box was otherwise idle). libgomp reads this when llama_cpp loads its
# libraries, so it must be set before the import; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp as lc  # noqa: E402
import numpy as np  # noqa: E402

from edgechat.engines.base import Feed  # noqa: E402
from edgechat.engines.sampling import CarriedSampling, Samplers  # noqa: E402
from edgechat.engines.streams import StreamMap  # noqa: E402
from edgechat.errors import ConfigError  # noqa: E402
from edgechat.stats import ChipLoad, EngineTimings  # noqa: E402
from edgechat.types import SamplingParams, TokenLogprobs  # noqa: E402

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
UBATCH = 63  # rows per llama.cpp micro-batch: below the 64 where flash attention switches kernel
STATE_FLAGS = 0  # llama_state_seq_*_ext flags: the whole sequence, copied to host memory
GGML_LOG_LEVEL_ERROR = 4  # ggml.h's enum ggml_log_level; llama-cpp-python does not export it
_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_log_set(_quiet_log, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_ready = True


@lc.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs every tensor at load, and its own multi-line story of a failure that this
    module reports in one line; EDGECHAT_DEBUG=1 shows its errors."""
    if level == GGML_LOG_LEVEL_ERROR and os.environ.get("EDGECHAT_DEBUG"):
        os.write(2, text)


def check_gguf(path: Path) -> None:
    """One clear line before llama.cpp sees a file it would reject with a vague failure."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory — pass --model PATH to a .gguf file")
    if not path.is_file():
        raise ConfigError(f"model file not found: {path} — pass --model PATH to a .gguf file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ConfigError(f"cannot read model file {path}: {err.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{path} is not a GGUF file — pass --model PATH to a .gguf model (or --bmodel for a TPU)")


class LlamaCppModel:
    """Step one: a GGUF's weights, and what a KV layout needs of them (bytes a cached token
    takes, the context it was trained for). The engine built on it owns it from then on."""

    def __init__(self, path: Path) -> None:
        check_gguf(path)
        _init_backend()
        self.path = str(path)
        self.model = lc.llama_model_load_from_file(self.path.encode(), lc.llama_model_default_params())
        if not self.model:
            raise ConfigError(f"llama.cpp could not load {path}: the file is damaged or of an unsupported architecture")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.metadata = _read_metadata(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        head_dim = lc.llama_model_n_embd(self.model) // max(1, lc.llama_model_n_head(self.model))
        # K and V, f16, every layer: what one cached token costs (for --kv-budget in MiB).
        self.kv_bytes_per_token = (
            2 * 2 * lc.llama_model_n_layer(self.model) * lc.llama_model_n_head_kv(self.model) * head_dim
        )
        self.trained_context = lc.llama_model_n_ctx_train(self.model)

    def context(self, wanted: int) -> int:
        """Tokens a sequence can hold: `wanted`, capped by the trained context when the GGUF says it."""
        return min(wanted, self.trained_context) if self.trained_context > 0 else wanted

    def free(self) -> None:
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None


class LlamaCppEngine:
    """The Engine contract (edgechat.engines.base) over one llama.cpp context."""

    name = "llamacpp"
    batch_prefill = True
    prefix_cache = True
    logprobs = True
    grammar = True
    carries_sampling = True

    def __init__(
        self,
        model: LlamaCppModel,
        *,
        context_length: int = 4096,
        max_sequences: int = 8,
        threads: int | None = None,
        prefill_chunk: int = 256,
        ubatch: int = UBATCH,
    ) -> None:
        """Step two: a context of `max_sequences` sequences of `context_length` tokens each (capped
        by the model's trained context): the KV layout (edgechat.room.layout). `ubatch` above
        UBATCH (at most a step's rows) reads long prompts faster at the price of UBATCH's
        bit-identical answers (--ubatch)."""
        self.model_path = model.path
        self.model, self.vocab, self.metadata = model.model, model.vocab, model.metadata
        self.n_vocab, self.kv_bytes_per_token = model.n_vocab, model.kv_bytes_per_token
        context = model.context(context_length)
        self.max_sequences = max_sequences
        self.max_batch = max_sequences
        self.prefill_chunk = prefill_chunk
        self.threads = threads or os.cpu_count() or 1

        cparams = lc.llama_context_default_params()
        cparams.n_ctx = context * max_sequences
        cparams.n_seq_max = max_sequences
        cparams.n_batch = prefill_chunk + max_sequences
        # Micro-batches under 64 rows keep llama.cpp on one flash-attention kernel for every row
        # (the tiled one it takes from 64 rows on rounds differently), so a prompt's cache is the
        # same bits however it was chunked or batched: re-prefilled == reused == restored.
        cparams.n_ubatch = min(ubatch, cparams.n_batch)
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        # A KV buffer per sequence: attention reads only the sequence's own cells, so its answer
        # is the same batched or alone, and decoding 16 sequences of 700 tokens ran 167 tok/s
        # here against 122 with one unified buffer (README, "How the KV cache is kept").
        cparams.kv_unified = False
        # Flash attention on (not "auto"): measured here 91 → 108 → 98 tok/s at 1/4/8 sequences
        # against 84 → 100 → 92 with auto.
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            model.free()
            raise ConfigError(
                f"llama.cpp could not create a KV cache of {cparams.n_ctx} tokens; "
                "lower --kv-budget or --context-length"
            )
        self.max_len = min(context, lc.llama_n_ctx_seq(self.ctx))
        self.max_prompt_len = self.max_len  # any answer room is the client's history budget
        self.kv_budget_tokens = self.max_len * max_sequences
        self.memory = lc.llama_get_memory(self.ctx)
        self._batch_capacity = cparams.n_batch
        self._batch = lc.llama_batch_init(self._batch_capacity, 0, 1)
        cap = self._batch_capacity
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(cap,))
        self._posv = np.ctypeslib.as_array(self._batch.pos, shape=(cap,))
        self._want = np.ctypeslib.as_array(self._batch.logits, shape=(cap,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(cap,))[:] = 1
        self._seq_rows = [self._batch.seq_id[i] for i in range(cap)]
        self._streams = StreamMap(max_sequences)  # our sequence number -> llama.cpp sequence id (its KV stream)
        self._free = set(range(max_sequences))
        self._pos: dict[int, int] = {}  # seq -> tokens in its cache
        self._sampling = Samplers(self.ctx, self.vocab, self.n_vocab)  # each sequence's sampler state
        self.tokens_computed = 0  # rows through llama_decode: prompt tokens prefilled and decodes
        # Where a step's time goes (seconds, monotonic; /metrics shows them): llama_decode, the
        # cache moves that pack a step's sequences onto consecutive streams, and sampling.
        self._timings = {"decode_s": 0.0, "cache_moves_s": 0.0, "cache_moves": 0, "sampling_s": 0.0}

    # ---- Engine contract ----

    def open_sequence(self) -> int:
        if not self._free:
            raise RuntimeError("no free sequence slot")
        seq = self._streams.lowest(self._free)
        self._free.remove(seq)
        self._pos[seq] = 0
        return seq

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: CarriedSampling | None = None) -> int:
        keep = max(0, min(keep, self._pos[seq]))
        lc.llama_memory_seq_rm(self.memory, self._streams.stream(seq), keep, -1)
        self._pos[seq] = keep
        if carried is not None:
            self._sampling.resume(seq, carried)
        else:
            self._sampling.start(seq, sampling)
        return keep

    def take_sampling(self, seq: int) -> CarriedSampling:
        return self._sampling.take(seq)

    def step(self, feeds: Sequence[Feed]) -> list[int | None]:
        """One llama_decode over `feeds`, their sequences first packed onto consecutive streams
        and the batch ordered by stream (see streams.py: otherwise llama.cpp runs a forward pass
        per sequence). Tokens come back in the order of `feeds`."""
        timings = self._timings
        began = time.perf_counter()
        for seq, other in self._streams.moves_to_pack([f[0] for f in feeds]):
            self._swap_caches(seq, other)
            timings["cache_moves"] += 1
        timings["cache_moves_s"] += time.perf_counter() - began
        order = sorted(range(len(feeds)), key=lambda i: self._streams.stream(feeds[i][0]))
        ordered = [feeds[i] for i in order]
        rows: list[int] = []  # batch index of each feed's last token, or -1
        tokens: list[int] = []
        positions: list[int] = []
        for seq, fed, sample in ordered:
            pos = self._pos[seq]
            if pos + len(fed) > self.max_len:
                raise RuntimeError(f"sequence {seq} is full ({self.max_len} tokens)")
            tokens.extend(fed)
            positions.extend(range(pos, pos + len(fed)))
            rows.append(len(tokens) - 1 if sample else -1)
        n = len(tokens)
        if n > self._batch_capacity:
            raise ValueError(f"batch of {n} tokens exceeds {self._batch_capacity}")
        self._tok[:n] = tokens
        self._posv[:n] = positions
        self._want[:n] = 0
        i = 0
        for seq, fed, _ in ordered:
            stream = self._streams.stream(seq)
            for _ in fed:
                self._seq_rows[i][0] = stream
                i += 1
        wanted = [r for r in rows if r >= 0]
        self._want[wanted] = 1
        self._batch.n_tokens = n
        before = {seq: self._pos[seq] for seq, _, _ in feeds}
        for seq, fed, _ in feeds:
            self._pos[seq] += len(fed)
        try:
            decoding = time.perf_counter()
            status = lc.llama_decode(self.ctx, self._batch)
            sampling = time.perf_counter()
            timings["decode_s"] += sampling - decoding
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status}")
            self.tokens_computed += n
        except Exception:
            for seq, pos in before.items():  # no sequence keeps a token of a failed step
                lc.llama_memory_seq_rm(self.memory, self._streams.stream(seq), pos, -1)
                self._pos[seq] = pos
            raise
        sampled = self._sampling.sample(ordered, rows, len(wanted))
        timings["sampling_s"] += time.perf_counter() - sampling
        out: list[int | None] = [None] * len(feeds)
        for i, token in zip(order, sampled, strict=True):
            out[i] = token
        return out

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        if not tokens:
            raise ValueError("prefill needs at least one token")
        out: int | None = None
        for start in range(0, len(tokens), self.prefill_chunk):
            chunk = tokens[start : start + self.prefill_chunk]
            out = self.step([(seq, chunk, start + len(chunk) == len(tokens))])[0]
        return out  # type: ignore[return-value]

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        return self.step([(seq, [token], True) for seq, token in batch])  # type: ignore[return-value]

    def token_logprobs(self, seq: int) -> TokenLogprobs | None:
        return self._sampling.token_logprobs(seq)

    def save(self, seq: int) -> bytearray:
        return self._save_stream(self._streams.stream(seq))

    def restore(self, seq: int, data: bytearray, tokens: int) -> bool:
        self._pos[seq] = 0
        if not self._restore_stream(self._streams.stream(seq), data, tokens):
            return False
        self._pos[seq] = tokens
        return True

    def copy(self, seq: int, source: int) -> bool:
        """`source`'s cache into the open, empty `seq` (a prefix shared across sessions; `start`
        then cuts it). A save and a restore: llama_memory_seq_cp between sequences with a KV buffer
        each copies the whole buffer at the next decode, and leaves it pending until then."""
        return self.restore(seq, self.save(source), self._pos[source])

    def cached_tokens(self, seq: int) -> int:
        return self._pos.get(seq, 0)

    def release(self, seq: int) -> None:
        if seq not in self._pos:
            return
        lc.llama_memory_seq_rm(self.memory, self._streams.stream(seq), -1, -1)
        del self._pos[seq]
        self._sampling.release(seq)
        self._free.add(seq)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_path,
            "model_name": Path(self.model_path).stem,  # general.name is often a training-run label
            "device": f"CPU, {self.threads} threads (llama.cpp {lc.__version__})",
            "context_length": self.max_len,
            "kv_sequences": self.max_sequences,
            "kv_budget_tokens": self.kv_budget_tokens,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }

    def timings(self) -> EngineTimings:
        return EngineTimings(**self._timings)

    def chip_load(self) -> tuple[ChipLoad, ...]:
        return ()

    def close(self) -> None:
        self._sampling.close()
        if self.ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self.ctx)
            lc.llama_model_free(self.model)
            self.ctx = self.model = None

    # ---- internals ----

    def _save_stream(self, stream: int) -> bytearray:
        size = lc.llama_state_seq_get_size_ext(self.ctx, stream, STATE_FLAGS)
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = lc.llama_state_seq_get_data_ext(self.ctx, view, size, stream, STATE_FLAGS)
        del view
        if written != size:
            raise RuntimeError(f"llama.cpp saved {written} of {size} bytes of sequence {stream}")
        return data

    def _restore_stream(self, stream: int, data: bytearray, tokens: int) -> bool:
        """`data` (a saved cache of `tokens` tokens) into the emptied `stream`; False, and the
        stream empty, when llama.cpp does not take it whole."""
        lc.llama_memory_seq_rm(self.memory, stream, -1, -1)
        if not data:
            return False
        view = (ctypes.c_uint8 * len(data)).from_buffer(data)
        read = lc.llama_state_seq_set_data_ext(self.ctx, view, len(data), stream, STATE_FLAGS)
        del view
        held = lc.llama_memory_seq_pos_max(self.memory, stream) + 1
        if read != len(data) or held != tokens:
            log.warning(
                "llama.cpp rejected a cache: took %d of %d bytes, holds %d of %d tokens",
                read, len(data), held, tokens,
            )  # fmt: skip
            lc.llama_memory_seq_rm(self.memory, stream, -1, -1)
            return False
        return True

    def _swap_caches(self, a: int, b: int) -> None:
        """Sequences `a` and `b` trade KV streams, caches and all (either may be empty or free)."""
        sa, sb = self._streams.stream(a), self._streams.stream(b)
        data_a = self._save_stream(sa) if self._pos.get(a) else None
        data_b = self._save_stream(sb) if self._pos.get(b) else None
        lc.llama_memory_seq_rm(self.memory, sa, -1, -1)
        lc.llama_memory_seq_rm(self.memory, sb, -1, -1)
        self._streams.swap(a, b)
        for seq, stream, data in ((a, sb, data_a), (b, sa, data_b)):
            if data is not None and not self._restore_stream(stream, data, self._pos[seq]):
                raise RuntimeError(f"could not move the cache of sequence {seq} to KV stream {stream}")


def _read_metadata(model: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    key_buf = ctypes.create_string_buffer(256)
    for i in range(lc.llama_model_meta_count(model)):
        if lc.llama_model_meta_key_by_index(model, i, key_buf, len(key_buf)) < 0:
            continue
        size = lc.llama_model_meta_val_str_by_index(model, i, None, 0)
        val_buf = ctypes.create_string_buffer(max(size, 0) + 1)
        lc.llama_model_meta_val_str_by_index(model, i, val_buf, len(val_buf))
        out[key_buf.value.decode("utf-8", "replace")] = val_buf.value.decode("utf-8", "replace")
    return out
