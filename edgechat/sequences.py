"""The scheduler's records: requests, the engine sequences they run on, and one step's plan.

Plain data owned by the scheduler's worker thread (edgechat.scheduler); nothing here calls the
engine. A request's KV target is `prompt + generated`: while its sequence holds less than all but
the last of those tokens it is PREFILL (prompt chunks, or a recompute when a time-sliced answer's
parked cache was lost); once the sequence holds everything but the last generated token it is
RUNNING and each step feeds that token.
"""

from __future__ import annotations

import enum
import queue
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from edgechat.kvcache import ParkedState
from edgechat.types import FinishReason, RequestStats, SamplingParams, TokenEvent, TokenLogprobs


@dataclass(frozen=True)
class EngineFacts:
    """What the planner may know of the engine: sizes and capability flags (edgechat.engines.base),
    never the engine itself, so deciding cannot call into it."""

    max_sequences: int
    max_len: int
    max_batch: int
    prefill_chunk: int | None
    batch_prefill: bool
    prefix_cache: bool
    kv_bytes_per_token: int
    carries_sampling: bool

    @classmethod
    def of(cls, engine: Any) -> EngineFacts:
        return cls(**{f.name: getattr(engine, f.name) for f in fields(cls)})


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Slot:
    """One engine sequence and what its KV cache holds, as the scheduler knows it."""

    tokens: list[int] = field(default_factory=list)
    cache_key: str | None = None
    request: Request | None = None  # None while the slot idles with a conversation's cache
    last_used: float = 0.0
    seq: int = -1  # the engine's id; -1 until the execute step opens the sequence


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int]
    cache_key: str | None
    deadline: float | None
    events: queue.Queue[TokenEvent] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: FinishReason = FinishReason.CANCELLED
    stats: RequestStats = field(default_factory=RequestStats)
    status: Status = Status.WAITING
    slot: Slot | None = None
    generated: list[int] = field(default_factory=list)
    last_position: int = -1  # last queue position reported
    resume: ParkedState | None = None  # time-sliced: its own cache, parked mid-answer in host RAM
    slice_start: int = 0  # tokens it had generated when it last got a sequence (time slicing)

    def target_len(self) -> int:
        return len(self.prompt) + len(self.generated)

    def target(self) -> list[int]:
        return self.prompt + self.generated

    def settle(self) -> None:
        """PREFILL or RUNNING, from what its sequence holds."""
        held = len(self.slot.tokens) if self.slot is not None else 0
        running = bool(self.generated) and held == self.target_len() - 1
        self.status = Status.RUNNING if running else Status.PREFILL


@dataclass(eq=False)
class Park:
    """Copy a sequence's cache to host RAM, then free it: for the conversation's next turn, or for a
    time-sliced answer to go on from (`request`) when its turn comes round again."""

    slot: Slot
    tokens: list[int]
    cache_key: str
    request: Request | None = None


@dataclass(eq=False)
class Admit:
    """Give a waiting request a sequence: a new one (opened in execute), or its cache key's idle one;
    keep the first `keep` cached tokens, restoring `restore` first when it comes from host RAM,
    or copying the cache of `share` (another conversation's sequence) first (edgechat.sharing). `kind`
    says where the kept tokens come from: reused, restored, shared, resumed (a time-sliced answer's
    own cache) or fresh (nothing kept)."""

    request: Request
    slot: Slot
    keep: int
    restore: ParkedState | None = None
    share: Slot | None = None
    kind: str = "fresh"


@dataclass(eq=False)
class Feed:
    """Tokens for one request's sequence this step; `sample`: return the token after them."""

    request: Request
    tokens: list[int]
    sample: bool


@dataclass
class Plan:
    """One step, decided before any engine call: the execute step runs it in this order."""

    parks: list[Park] = field(default_factory=list)
    releases: list[Slot] = field(default_factory=list)  # evictions, finished and dropped caches
    admits: list[Admit] = field(default_factory=list)
    feeds: list[Feed] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.parks or self.releases or self.admits or self.feeds)


@dataclass
class Outputs:
    """What the engine did with a plan."""

    saved: dict[Park, bytearray] = field(default_factory=dict)
    sampling: dict[Park, Any] = field(default_factory=dict)  # a sliced answer's sampler state (carries_sampling)
    kept: dict[Request, int] = field(default_factory=dict)  # per admit: tokens the engine kept
    restore_failed: set[Request] = field(default_factory=set)
    tokens: dict[Request, int | None] = field(default_factory=dict)  # per feed that ran
    logprobs: dict[Request, TokenLogprobs] = field(default_factory=dict)  # per sampled token, when asked
    failed: dict[Request, str] = field(default_factory=dict)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
