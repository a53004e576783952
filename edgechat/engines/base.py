"""The token-level engine contract: what the scheduler thread may ask of a backend.

Only the scheduler's worker thread calls these methods, so engines need no locks. A sequence is a
slot with its own KV cache; the scheduler opens it, starts a request on it, feeds prompt chunks,
decodes one token per step for a batch of sequences, and releases it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from edgechat.types import SamplingParams


class Engine(Protocol):
    name: str  # backend name shown to users: "llamacpp", "sail"
    model_path: str
    max_len: int  # tokens one sequence can hold (prompt + answer)
    max_sequences: int  # sequences that can hold a KV cache at once
    max_batch: int  # sequences decoded together in one step (1 on the TPU)
    prefill_chunk: int | None  # most prompt tokens per prefill call; None = whole prompt at once

    def open_sequence(self) -> int:
        """Claim a free sequence slot; raises RuntimeError when none is free."""
        ...

    def start(self, seq: int, sampling: SamplingParams, keep: int) -> int:
        """Begin a request on `seq`: keep at most its first `keep` cached tokens, drop the rest,
        set up fresh sampling state; return how many were kept (an engine that cannot extend a
        cached prefix returns 0 and gets the whole prompt through `prefill`)."""
        ...

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        """Append prompt tokens to the sequence's cache; return the token sampled after them."""
        ...

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int]:
        """One step for several sequences: feed each its last token, return each next token."""
        ...

    def cached_tokens(self, seq: int) -> int:
        """How many tokens the sequence's cache holds now."""
        ...

    def release(self, seq: int) -> None:
        """Free the slot and its cache for another request."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the server panel: device, model file, context length."""
        ...

    def close(self) -> None: ...
