"""Engine-wide figures, typed: one record per layer, each filled by its own layer and read as
fields by the server panel, the terminal's `stats`, /metrics (edgechat.metrics maps each field
to its metric name once) and the benches.

    BackendStats     every backend (a remote server too): alive, load, tok/s   (edgechat.backend)
    └ SchedulerStats a local engine's queue, answers, turns and steps         (edgechat.scheduler)
      ├ RoomStats    the KV layout and the caches: resident, idle, parked      (edgechat.room)
      ├ EngineTimings where llama.cpp's step time goes                         (engines/llamacpp)
      └ ChipLoad     one per TPU of an engine over several chips              (engines/sail_chips)

Plain data: imports nothing of ours, so every layer (and metrics, at the bottom) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineTimings:
    """Seconds (monotonic) of a llama.cpp engine's steps: llama_decode, the cache moves that pack
    a step's sequences onto consecutive streams, and sampling."""

    decode_s: float = 0.0
    cache_moves_s: float = 0.0
    cache_moves: int = 0
    sampling_s: float = 0.0


@dataclass(frozen=True)
class ChipLoad:
    """One TPU of --dev_ids: in service or why not, sequences in use, KV slots."""

    tpu: int
    alive: bool
    busy: int
    slots: int
    problem: str | None = None


@dataclass(frozen=True)
class RoomStats:
    """The KV layout and what the caches hold (edgechat.room), as of the end of a step."""

    max_sequences: int = 0  # engine sequences that can hold a cache (the layout)
    context_per_answer: int = 0  # tokens each sequence holds
    kv_tokens_budget: int = 0  # max_sequences x context_per_answer
    kv_tokens_used: int = 0
    sequences_in_use: int = 0  # held by answers or idle caches
    sessions_cached: int = 0  # idle caches kept in a sequence for their next turn
    sessions_parked: int = 0  # idle caches in host RAM
    parked_mib: float = 0.0
    host_cache_mib: float = 0.0  # --host-cache
    host_ram_short: bool = False  # parking stopped: the machine is short of RAM
    sessions_dropped: int = 0  # parked caches dropped for room, age or RAM
    parks: int = 0  # caches parked in host RAM
    prompt_tokens_reused: int = 0  # prompt tokens from a conversation's own cache
    prompt_tokens_shared: int = 0  # ... copied from another's (a shared prefix)
    prompt_tokens_prefilled: int = 0  # ... read by the engine, pinned prefixes included
    turns_shared: int = 0
    pinned_prefixes: int = 0  # the room's --system / --handout prefixes kept
    pinned_tokens: int = 0
    prefix_lookup_us: float = 0.0  # mean time of a shared-prefix lookup


@dataclass(frozen=True)
class SchedulerStats:
    """A local engine behind the scheduler: limits, answers, turns, the worker's steps."""

    max_running: int = 0  # --max-running (fewer once a TPU of several is out)
    max_queue: int = 0
    refused: int = 0  # requests refused with a full queue
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    restore_failures: int = 0  # parked caches the engine rejected (those turns re-prefilled)
    slices: int = 0  # answers that lent their sequence to someone waiting (--time-slice)
    turns_reused: int = 0  # turns that went on from their cache in a sequence
    turns_restored: int = 0  # ... restored from host RAM
    turns_reprefilled: int = 0  # turns of a known conversation that read their whole prompt again
    steps: int = 0  # worker steps that ran work
    step_s: float = 0.0  # their wall seconds
    step_cpu_s: float = 0.0  # their CPU seconds on the worker thread
    room: RoomStats = field(default_factory=RoomStats)
    engine: EngineTimings | None = None  # engines that time their steps (llama.cpp)
    chips: tuple[ChipLoad, ...] = ()  # an engine over several TPUs


@dataclass(frozen=True)
class BackendStats:
    """What every backend reports (the server panel's load line, /metrics, the terminal)."""

    alive: bool = True
    running: int = 0  # answers generating tokens (those still reading their prompt: `prefilling`)
    prefilling: int = 0
    waiting: int = 0
    aggregate_tps: float = 0.0  # tokens generated per second over the last seconds
    scheduler: SchedulerStats | None = None  # None for a remote server (its queue is its own)
