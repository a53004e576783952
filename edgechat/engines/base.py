"""The token-level engine contract: what the scheduler thread may ask of a backend.

Only the scheduler's worker thread calls these methods, so engines need no locks. A sequence is a
slot with its own KV cache; the scheduler opens it, starts a request on it, feeds it tokens
(prompt chunks, then one token per step), and releases it.

Two capability flags say what an engine can do beyond that minimum, so the scheduler never has to
guess from the engine's type:

- `batch_prefill`: `step(feeds)` takes prompt chunks of several sequences and the running
  sequences' next tokens in ONE call (llama.cpp's batch). Without it the scheduler calls `decode`
  for the running sequences and `prefill` for one prompt at a time (the TPU's static graphs).
- `prefix_cache`: a sequence's cache outlives its request, so a session's next request can keep
  the common prefix (`start(keep>0)`), and the cache can be copied to host RAM and back
  (`save`/`restore`). Without it every request prefills its whole prompt and nothing is parked.
- `logprobs`: after a `step`, `token_logprobs(seq)` gives the sampled token's log-probability and
  the top alternatives for sequences whose sampling asked (`SamplingParams.logprobs`).
- `grammar`: `start` honours `SamplingParams.grammar` (GBNF), per sequence, in the same batch.
  Engines without these flags are never given such requests (the API refuses them).
- `carries_sampling`: a sequence's sampling state (a seeded random stream, the penalties' token
  history, a grammar's parse state) can be taken out with `take_sampling` before `release` and
  given back to `start`, so a sampled answer parked for time slicing goes on exactly as it would
  have. Without it only answers whose next token the cache alone decides are sliced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from edgechat.stats import ChipLoad, EngineTimings
from edgechat.types import SamplingParams, TokenLogprobs

# (sequence, tokens to append to its cache, whether to sample the token that follows them)
Feed = tuple[int, Sequence[int], bool]


class Engine(Protocol):
    name: str  # backend name shown to users: "llamacpp", "sail"
    model_path: str
    max_len: int  # tokens one sequence can hold (prompt + answer)
    max_prompt_len: int  # most prompt tokens it takes (a TPU bmodel keeps answer room: --max-prompt-share)
    max_sequences: int  # sequences that can hold a KV cache at once
    max_batch: int  # sequences decoded together in one step (1 on the TPU)
    prefill_chunk: int | None  # prompt tokens per step (all prefills together); None = whole prompts
    batch_prefill: bool  # see the module docstring
    prefix_cache: bool  # see the module docstring
    kv_bytes_per_token: int  # host RAM a parked token takes (estimates before `save`)
    logprobs: bool  # see the module docstring
    grammar: bool  # see the module docstring
    carries_sampling: bool  # see the module docstring

    def open_sequence(self) -> int:
        """Claim a free sequence slot; raises RuntimeError when none is free."""
        ...

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: Any = None) -> int:
        """Begin a request on `seq`: keep at most its first `keep` cached tokens, drop the rest,
        set up fresh sampling state (or go on with `carried`, from `take_sampling`); return how
        many were kept (an engine that cannot extend a cached prefix returns 0 and gets the whole
        prompt through `prefill`)."""
        ...

    def take_sampling(self, seq: int) -> Any:
        """(carries_sampling engines) Take `seq`'s sampling state out before `release`, for
        `start(carried=)`; an opaque object that frees itself when dropped unused."""
        ...

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        """Append prompt tokens to the sequence's cache; return the token sampled after them."""
        ...

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int | Exception]:
        """One step for several sequences: feed each its last token, return each next token. An
        engine over several devices may return, for a sequence whose device failed, the error
        instead: that sequence alone fails, the others' tokens stand."""
        ...

    def step(self, feeds: Sequence[Feed]) -> list[int | None | Exception]:
        """(batch_prefill engines) Append every feed's tokens in one forward pass; return, per
        feed, the sampled next token, or None where the feed did not ask for one. On failure no
        sequence keeps any of this step's tokens; an engine over several devices may instead
        return a failed entry's error in its place (the others' tokens stand)."""
        ...

    def token_logprobs(self, seq: int) -> TokenLogprobs | None:
        """(logprobs engines) The log-probabilities of the token the last step sampled for `seq`,
        when its sampling asked for them."""
        ...

    def save(self, seq: int) -> bytearray:
        """(prefix_cache engines) A copy of the sequence's cache, for `restore`."""
        ...

    def restore(self, seq: int, data: bytearray, tokens: int) -> bool:
        """(prefix_cache engines) Load a `save`d cache of `tokens` tokens into an open, empty
        sequence; False (and the sequence left empty) when the engine rejects it."""
        ...

    def copy(self, seq: int, source: int) -> bool:
        """(prefix_cache engines) Copy `source`'s cache into the open, empty `seq` (a prompt
        prefix shared across sessions; `start` then keeps what is common); False (and `seq` left
        empty) when the engine cannot."""
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

    def timings(self) -> EngineTimings | None:
        """Where the engine's step time went so far (/metrics); None for an engine that does not
        time its steps."""
        ...

    def chip_load(self) -> tuple[ChipLoad, ...]:
        """Per device of an engine over several (TPUs of --dev_ids): in service, sequences in use,
        KV slots; empty for a single-device engine. The scheduler admits no more answers than the
        slots of the devices in service."""
        ...

    def close(self) -> None: ...
