"""GGUF on CPU/ARM through llama-cpp-python's low-level API: one context, many sequences.

The high-level `Llama` class holds one sequence per context, so the context is built directly
with `n_seq_max` = sessions and each chat request runs on its own sequence id with its own KV
cache. Every step fills ONE `llama_batch` with a token per running sequence (or a prompt chunk)
and calls `llama_decode` once. Sampling is llama.cpp's own sampler chain, one chain per sequence.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp as lc

from edgechat.errors import ConfigError
from edgechat.types import SamplingParams

GGUF_MAGIC = b"GGUF"
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


class LlamaCppEngine:
    """The Engine contract (edgechat.engines.base) over one llama.cpp context."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        context_length: int = 4096,
        max_sequences: int = 8,
        threads: int | None = None,
        prefill_chunk: int = 256,
    ) -> None:
        check_gguf(model_path)
        _init_backend()
        self.model_path = str(model_path)
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(self.model_path.encode(), mparams)
        if not self.model:
            raise ConfigError(
                f"llama.cpp could not load {model_path}: the file is damaged or of an unsupported architecture"
            )
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.metadata = _read_metadata(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        head_dim = lc.llama_model_n_embd(self.model) // max(1, lc.llama_model_n_head(self.model))
        # K and V, f16, every layer: what one cached token costs (for --kv-budget in MiB).
        self.kv_bytes_per_token = (
            2 * 2 * lc.llama_model_n_layer(self.model) * lc.llama_model_n_head_kv(self.model) * head_dim
        )
        trained = lc.llama_model_n_ctx_train(self.model)
        self.max_len = min(context_length, trained) if trained > 0 else context_length
        self.max_sequences = max_sequences
        self.max_batch = max_sequences
        self.prefill_chunk = prefill_chunk
        self.threads = threads or os.cpu_count() or 1

        cparams = lc.llama_context_default_params()
        cparams.n_ctx = self.max_len * max_sequences
        cparams.n_seq_max = max_sequences
        cparams.n_batch = max(prefill_chunk, max_sequences) + max_sequences
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        # A KV buffer per sequence: a sequence's greedy answer is then the same batched or alone
        # (a unified buffer batched somewhat faster here but changed answers on near-ties).
        cparams.kv_unified = False
        # Flash attention on (not "auto"): measured here 91 → 108 → 98 tok/s at 1/4/8 sequences
        # against 84 → 100 → 92 with auto.
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ConfigError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens; "
                "lower --context-length or --max-sessions"
            )
        self.memory = lc.llama_get_memory(self.ctx)
        self._batch_capacity = cparams.n_batch
        self._batch = lc.llama_batch_init(self._batch_capacity, 0, 1)
        self._free = list(range(max_sequences - 1, -1, -1))
        self._pos: dict[int, int] = {}  # seq -> tokens in its cache
        self._samplers: dict[int, Any] = {}

    # ---- Engine contract ----

    def open_sequence(self) -> int:
        if not self._free:
            raise RuntimeError("no free sequence slot")
        seq = self._free.pop()
        self._pos[seq] = 0
        return seq

    def start(self, seq: int, sampling: SamplingParams, keep: int) -> int:
        keep = max(0, min(keep, self._pos[seq]))
        lc.llama_memory_seq_rm(self.memory, seq, keep, -1)
        self._pos[seq] = keep
        self._set_sampler(seq, _sampler_chain(sampling, self.n_vocab))
        return keep

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        if not tokens:
            raise ValueError("prefill needs at least one token")
        sampler = self._samplers[seq]
        for start in range(0, len(tokens), self.prefill_chunk):
            chunk = tokens[start : start + self.prefill_chunk]
            self._forward([(seq, t, i == len(chunk) - 1) for i, t in enumerate(chunk)])
            for t in chunk:
                lc.llama_sampler_accept(sampler, t)
        return int(lc.llama_sampler_sample(sampler, self.ctx, len(chunk) - 1))

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        self._forward([(seq, token, True) for seq, token in batch])
        return [int(lc.llama_sampler_sample(self._samplers[seq], self.ctx, i)) for i, (seq, _) in enumerate(batch)]

    def cached_tokens(self, seq: int) -> int:
        return self._pos.get(seq, 0)

    def release(self, seq: int) -> None:
        if seq not in self._pos:
            return
        lc.llama_memory_seq_rm(self.memory, seq, -1, -1)
        del self._pos[seq]
        self._set_sampler(seq, None)
        self._free.append(seq)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_path,
            "model_name": Path(self.model_path).stem,  # general.name is often a training-run label
            "device": f"CPU, {self.threads} threads (llama.cpp {lc.__version__})",
            "context_length": self.max_len,
            "max_sessions": self.max_sequences,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }

    def close(self) -> None:
        for seq in list(self._samplers):
            self._set_sampler(seq, None)
        if self.ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self.ctx)
            lc.llama_model_free(self.model)
            self.ctx = self.model = None

    # ---- internals ----

    def _set_sampler(self, seq: int, sampler: Any) -> None:
        old = self._samplers.pop(seq, None)
        if old is not None:
            lc.llama_sampler_free(old)
        if sampler is not None:
            self._samplers[seq] = sampler

    def _forward(self, items: Sequence[tuple[int, int, bool]]) -> None:
        """One llama_decode; on failure every sequence is rolled back to where it was, so the
        scheduler can retry the survivors of a failed batch one by one."""
        before = {seq: self._pos[seq] for seq, _, _ in items}
        try:
            self._fill(items)
            self._run()
        except Exception:
            for seq, pos in before.items():
                lc.llama_memory_seq_rm(self.memory, seq, pos, -1)
                self._pos[seq] = pos
            raise

    def _fill(self, items: Sequence[tuple[int, int, bool]]) -> None:
        """Load (seq, token, want_logits) rows into the batch at each sequence's next position."""
        if len(items) > self._batch_capacity:
            raise ValueError(f"batch of {len(items)} exceeds {self._batch_capacity}")
        b = self._batch
        for i, (seq, token, logits) in enumerate(items):
            pos = self._pos[seq]
            if pos >= self.max_len:
                raise RuntimeError(f"sequence {seq} is full ({self.max_len} tokens)")
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
            self._pos[seq] = pos + 1
        b.n_tokens = len(items)

    def _run(self) -> None:
        status = lc.llama_decode(self.ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")


def _sampler_chain(s: SamplingParams, n_vocab: int) -> Any:
    """llama.cpp's own chain: penalties, then greedy, or top-k → top-p → temperature → seeded dist."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if s.repetition_penalty != 1.0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(n_vocab, 64, s.repetition_penalty, 0.0, 0.0))
    if s.greedy:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
    return chain


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
