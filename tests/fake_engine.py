"""A deterministic token engine for scheduler PLANNER tests (issue 10), not a stand-in for the
product: every product behaviour is tested on llama.cpp.

Each sequence's next token is a function of everything in its cache, so an answer continues the
same way whether its cache was kept, parked and restored, or recomputed, and differs as soon as
a single cached token is wrong. The engine is as strict as a real one: it refuses tokens beyond a
sequence's length, unopened or
busy sequences, a batch wider than `max_batch`, and calls from more than one thread. It records
every call in `calls` so tests can assert what the scheduler asked, in which step.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from edgechat.stats import ChipLoad, EngineTimings
from edgechat.types import SamplingParams

VOCAB = 997
FIRST_TOKEN = 3  # tokens 0..2 are left free for tests to use as stop ids


def next_token(tokens: Sequence[int]) -> int:
    """The continuation of a cache: a rolling hash of all of it."""
    h = 17
    for t in tokens:
        h = (h * 31 + t) % 1_000_003
    return FIRST_TOKEN + h % (VOCAB - FIRST_TOKEN)


def expected_answer(prompt: Sequence[int], n: int, stop_ids: frozenset[int] = frozenset()) -> list[int]:
    """What a request alone on the engine gets: n tokens, or fewer up to a stop id."""
    cache, out = list(prompt), []
    for _ in range(n):
        token = next_token(cache)
        if token in stop_ids:
            break
        out.append(token)
        cache.append(token)
    return out


class FakeEngine:
    name = "fake"
    model_path = "fake.gguf"

    def __init__(
        self,
        *,
        max_sequences: int = 4,
        max_len: int = 256,
        max_batch: int | None = None,
        prefill_chunk: int | None = 32,
        batch_prefill: bool = True,
        prefix_cache: bool = True,
        kv_bytes_per_token: int = 64,
    ) -> None:
        self.max_sequences = max_sequences
        self.max_len = max_len
        self.max_prompt_len = max_len
        self.max_batch = max_batch or max_sequences
        self.prefill_chunk = prefill_chunk
        self.batch_prefill = batch_prefill
        self.prefix_cache = prefix_cache
        self.logprobs = False
        self.grammar = False
        self.carries_sampling = False  # sampled answers are not sliced (no sampler to carry)
        self.kv_bytes_per_token = kv_bytes_per_token
        self.calls: list[tuple[Any, ...]] = []
        self.fail_seq: int | None = None  # step/decode raises while this sequence is in the batch
        self.corrupt_saves = False  # save() returns bytes restore() rejects
        self._cache: dict[int, list[int]] = {}
        self._thread: int | None = None

    # ---- Engine contract ----

    def open_sequence(self) -> int:
        self._check_thread()
        free = [s for s in range(self.max_sequences) if s not in self._cache]
        if not free:
            raise RuntimeError("no free sequence")
        self._cache[free[0]] = []
        self.calls.append(("open", free[0]))
        return free[0]

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: object = None) -> int:
        cache = self._open(seq)
        kept = min(keep, len(cache)) if self.prefix_cache else 0
        del cache[kept:]
        self.calls.append(("start", seq, kept))
        return kept

    def step(self, feeds: Sequence[tuple[int, Sequence[int], bool]]) -> list[int | None]:
        assert self.batch_prefill, "step() on an engine without batch_prefill"
        self._check_batch([seq for seq, _, _ in feeds])
        for seq, tokens, _ in feeds:
            if len(self._cache[seq]) + len(tokens) > self.max_len:
                raise RuntimeError(f"sequence {seq} is full")
        self.calls.append(("step", [(seq, len(tokens), sample) for seq, tokens, sample in feeds]))
        for seq, tokens, _ in feeds:
            self._cache[seq].extend(tokens)
        return [next_token(self._cache[seq]) if sample else None for seq, _, sample in feeds]

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        self._check_batch([seq])
        self.calls.append(("prefill", seq, len(tokens)))
        self._append(seq, tokens)
        return next_token(self._cache[seq])

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        self._check_batch([seq for seq, _ in batch])
        self.calls.append(("decode", [seq for seq, _ in batch]))
        for seq, token in batch:
            self._append(seq, [token])
        return [next_token(self._cache[seq]) for seq, _ in batch]

    def save(self, seq: int) -> bytearray:
        assert self.prefix_cache
        cache = self._open(seq)
        self.calls.append(("save", seq, len(cache)))
        data = json.dumps(cache).encode()
        return bytearray(b"garbage" if self.corrupt_saves else data.ljust(len(cache) * self.kv_bytes_per_token))

    def restore(self, seq: int, data: bytearray, tokens: int) -> bool:
        assert self.prefix_cache
        cache = self._open(seq)
        assert not cache, "restore into a sequence that holds tokens"
        try:
            restored = json.loads(bytes(data).rstrip())
        except ValueError:
            restored = None
        ok = isinstance(restored, list) and len(restored) == tokens
        self.calls.append(("restore", seq, tokens, ok))
        if ok:
            cache.extend(restored)
        return ok

    def copy(self, seq: int, source: int) -> bool:
        assert self.prefix_cache
        cache, held = self._open(seq), self._open(source)
        assert not cache, "copy into a sequence that holds tokens"
        self.calls.append(("copy", seq, source, len(held)))
        cache.extend(held)
        return True

    def cached_tokens(self, seq: int) -> int:
        return len(self._cache.get(seq, []))

    def release(self, seq: int) -> None:
        self._check_thread()
        self.calls.append(("release", seq))
        self._cache.pop(seq, None)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path, "context_length": self.max_len}

    def timings(self) -> EngineTimings | None:
        return None

    def chip_load(self) -> tuple[ChipLoad, ...]:
        return ()

    def close(self) -> None:
        self._cache.clear()

    # ---- for tests ----

    def cache(self, seq: int) -> list[int]:
        return list(self._cache[seq])

    @property
    def open_sequences(self) -> int:
        return len(self._cache)

    def steps(self) -> list[list[tuple[int, int, bool]]]:
        return [call[1] for call in self.calls if call[0] == "step"]

    # ---- internals ----

    def _check_thread(self) -> None:
        me = threading.get_ident()
        if self._thread is None:
            self._thread = me
        assert self._thread == me, "engine called from a second thread"

    def _open(self, seq: int) -> list[int]:
        self._check_thread()
        if seq not in self._cache:
            raise RuntimeError(f"sequence {seq} is not open")
        return self._cache[seq]

    def _check_batch(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._open(seq)
        if len(seqs) != len(set(seqs)):
            raise RuntimeError(f"a sequence twice in one batch: {seqs}")
        if len(seqs) > self.max_batch:
            raise RuntimeError(f"batch of {len(seqs)} sequences exceeds {self.max_batch}")
        if self.fail_seq in seqs:
            raise RuntimeError("injected device fault")

    def _append(self, seq: int, tokens: Sequence[int]) -> None:
        cache = self._cache[seq]
        if len(cache) + len(tokens) > self.max_len:
            raise RuntimeError(f"sequence {seq} is full")
        cache.extend(tokens)
