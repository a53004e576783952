"""What the box tells Prometheus: `edgechat:`-prefixed metrics (as vLLM's `vllm:`), written with
`prometheus_client` into a registry of their own (not the library's global one, so tests can
build several and nothing another library registers leaks into /metrics).

Two kinds of figures:
- per answer, observed ONCE where every answer ends (ChatClient yields its Done and calls
  `observe_answer`): requests by finish reason and source, errors, prompt / reused / generated
  tokens, time to first token and queue wait histograms. Page, terminal and API alike.
- engine-wide, read at scrape time from the backend's typed `stats()` (a custom Collector):
  running, waiting, KV tokens, sessions cached, ... each field mapped to its metric once below. A
  record the backend does not have is not exported, so a remote backend (no KV cache of ours) fits.

No chat text, session ids or owner tokens go into a label: labels are closed sets (sources,
finish reasons, HTTP statuses) so the series count stays fixed.

This module imports only the plain types and prometheus_client (the client layer calls it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from edgechat.stats import BackendStats, ChipLoad
from edgechat.types import FinishReason, TurnStats

disable_created_metrics()  # no `_created` series per label set: vLLM and llama.cpp server do the same

PREFIX = "edgechat:"
SOURCES = ("page", "api", "terminal")  # who asked; anything else is counted as "other"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
QUEUE_BUCKETS = (0.005, 0.05, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

MIB = float(1 << 20)

# The backend's stats() (edgechat.stats.BackendStats) at scrape time, each field mapped to its
# metric ONCE: (metric name, the field's path, scale, help). A path through a record the backend
# does not have (a remote server has no scheduler; only llama.cpp times its steps) exports nothing.
STATS_GAUGES: tuple[tuple[str, str, float, str], ...] = (
    ("num_requests_waiting", "waiting", 1, "Requests waiting in the queue for a sequence."),
    ("num_requests_prefilling", "prefilling", 1, "Requests reading their prompt (included in running)."),
    ("generation_tokens_per_second", "aggregate_tps", 1, "Tokens generated per second over the last 5 s."),
    ("max_running", "scheduler.max_running", 1, "Most requests generating at once (--max-running)."),
    ("max_queue", "scheduler.max_queue", 1, "Most requests waiting (--max-queue)."),
    ("kv_cache_tokens_used", "scheduler.room.kv_tokens_used", 1,
     "Tokens held in KV caches (running and idle conversations)."),
    ("kv_cache_tokens_budget", "scheduler.room.kv_tokens_budget", 1, "Most KV tokens kept (--kv-budget)."),
    ("sessions_cached", "scheduler.room.sessions_cached", 1,
     "Idle conversations whose KV cache is kept on the engine for their next turn."),
    ("sessions_parked", "scheduler.room.sessions_parked", 1,
     "Idle conversations whose KV cache is parked in host RAM."),
    ("parked_cache_bytes", "scheduler.room.parked_mib", MIB, "Host RAM holding parked KV caches."),
    ("host_cache_capacity_bytes", "scheduler.room.host_cache_mib", MIB,
     "Host RAM parked KV caches may take (--host-cache)."),
    ("sequences_in_use", "scheduler.room.sequences_in_use", 1,
     "Engine sequences held by running or cached conversations."),
    ("max_sequences", "scheduler.room.max_sequences", 1,
     "Engine sequences that can hold a KV cache: --max-running, or more when --kv-budget holds more full contexts."),
    ("pinned_prefix_tokens", "scheduler.room.pinned_tokens", 1,
     "Tokens of the room's pinned prefixes (--system, --handout)."),
)  # fmt: skip
# Monotonic fields, exported as counters (the name gets _total).
STATS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("requests_refused", "scheduler.refused", "Requests refused because the queue was full."),
    ("turns_reused", "scheduler.turns_reused", "Turns that went on from their conversation's KV cache on the engine."),
    ("turns_restored", "scheduler.turns_restored",
     "Turns whose KV cache was restored from host RAM instead of re-read."),
    ("turns_reprefilled", "scheduler.turns_reprefilled",
     "Turns of a known conversation that re-read their whole prompt."),
    ("sessions_dropped", "scheduler.room.sessions_dropped",
     "Parked KV caches dropped for room (their next turn re-reads)."),
    ("time_slices", "scheduler.slices",
     "Answers that lent their sequence to someone waiting after --time-slice tokens (parked, resumed later)."),
    ("turns_shared", "scheduler.room.turns_shared",
     "Turns that started from a copy of another conversation's prompt prefix."),
    ("engine_prompt_tokens_prefilled", "scheduler.room.prompt_tokens_prefilled",
     "Prompt tokens the engine read (prefilled), pinned prefixes included; the rest came from a cache."),
    ("scheduler_steps", "scheduler.steps", "Scheduler steps that ran work (one batched engine call each, at most)."),
    ("scheduler_step_seconds", "scheduler.step_s", "Wall seconds of those steps, engine calls included."),
    ("scheduler_step_cpu_seconds", "scheduler.step_cpu_s", "CPU seconds of the scheduler thread in those steps."),
    ("engine_decode_seconds", "scheduler.engine.decode_s", "Wall seconds inside llama_decode."),
    ("engine_cache_moves", "scheduler.engine.cache_moves",
     "KV caches moved between streams so a step's sequences sit side by side."),
    ("engine_cache_move_seconds", "scheduler.engine.cache_moves_s", "Wall seconds spent on those moves."),
    ("engine_sampling_seconds", "scheduler.engine.sampling_s", "Wall seconds picking the next tokens from the logits."),
)  # fmt: skip
INFO_KEYS = ("backend", "model_name", "template", "context_length")  # never a path, URL or key


class ServingMetrics:
    """One registry: the per-answer counters plus a collector reading the backend at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._engine = _EngineCollector()
        self.registry.register(self._engine)
        labels = ["finished_reason", "source"]
        by_source = ["source"]
        r = self.registry
        self.requests = Counter(PREFIX + "requests", "Answers finished, by finish reason and source.", labels,
                                registry=r)  # fmt: skip
        self.errors = Counter(PREFIX + "request_errors", "Answers that failed or were refused.", by_source, registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of finished answers.", by_source,
                                     registry=r)  # fmt: skip
        self.reused_tokens = Counter(PREFIX + "prompt_tokens_reused", "Prompt tokens served from a kept KV cache.",
                                     by_source, registry=r)  # fmt: skip
        self.shared_tokens = Counter(PREFIX + "prompt_tokens_shared",
                                     "Prompt tokens copied from another conversation's KV cache (a shared prefix).",
                                     by_source, registry=r)  # fmt: skip
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", by_source, registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time from submission to the first token.",
                              by_source, buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.queue_time = Histogram(PREFIX + "request_queue_time_seconds", "Time spent waiting for a sequence.",
                                    by_source, buckets=QUEUE_BUCKETS, registry=r)  # fmt: skip
        self.api_errors = Counter(PREFIX + "api_errors", "Error responses of /v1, by HTTP status.", ["status"],
                                  registry=r)  # fmt: skip
        for source in SOURCES:  # every series exists from the start, so rates work from the first scrape
            for reason in FinishReason:
                self.requests.labels(reason.value, source)
            for metric in (self.errors, self.prompt_tokens, self.reused_tokens, self.shared_tokens,
                           self.generation_tokens, self.ttft, self.queue_time):  # fmt: skip
                metric.labels(source)

    def bind(
        self,
        stats: Callable[[], BackendStats | None],
        info: Callable[[], Mapping[str, Any] | None],
        page_sessions: Callable[[], int | None] | None = None,
    ) -> None:
        """Where scrape-time figures come from: the backend's stats() and describe() (None while
        no runtime is loaded) and, in a page server, the number of open page sessions."""
        self._engine.stats, self._engine.info = stats, info
        if page_sessions is not None:
            self._engine.page_sessions = page_sessions

    def observe(self, source: str, stats: TurnStats) -> None:
        source = source if source in SOURCES else "other"
        reason = (stats.finish_reason or FinishReason.CANCELLED).value
        self.requests.labels(reason, source).inc()
        if stats.error is not None or stats.finish_reason is FinishReason.ERROR:
            self.errors.labels(source).inc()
        self.prompt_tokens.labels(source).inc(stats.prompt_tokens)
        self.reused_tokens.labels(source).inc(stats.reused_tokens)
        self.shared_tokens.labels(source).inc(stats.shared_tokens)
        self.generation_tokens.labels(source).inc(stats.completion_tokens)
        if stats.first_token_s is not None:
            self.ttft.labels(source).observe(stats.first_token_s)
        if stats.prompt_tokens:  # refused before the queue: no wait to report
            self.queue_time.labels(source).observe(stats.queue_wait_s)

    def api_error(self, status: int) -> None:
        self.api_errors.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Gauges read from the backend when Prometheus scrapes, so they are never stale."""

    def __init__(self) -> None:
        self.stats: Callable[[], BackendStats | None] = lambda: None
        self.info: Callable[[], Mapping[str, Any] | None] = lambda: None
        self.page_sessions: Callable[[], int | None] = lambda: None

    def describe(self) -> list[Any]:
        return []  # families depend on what the backend reports; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        stats = self.stats()
        info = self.info() or {}
        alive = stats is not None and stats.alive
        yield _gauge("engine_alive", "1 while the engine thread (or remote client) serves; 0 after it died.",
                     1 if alive else 0)  # fmt: skip
        if stats is not None:
            yield from _stats_metrics(stats)
        sessions = self.page_sessions()
        if sessions is not None:
            yield _gauge("page_sessions_open", "Browser sessions connected to the page.", sessions)
        if info:
            labels = {k: str(info[k]) for k in INFO_KEYS if info.get(k) is not None}
            yield InfoMetricFamily(PREFIX + "model", "The model this box serves.", value=labels)


def _stats_metrics(stats: BackendStats) -> Iterator[Any]:
    yield _gauge(
        "num_requests_running", "Requests generating or reading their prompt.", stats.running + stats.prefilling
    )
    for name, path, scale, text in STATS_GAUGES:
        value = _field(stats, path)
        if value is not None:
            yield _gauge(name, text, value * scale)
    room = stats.scheduler.room if stats.scheduler is not None else None
    if room is not None and room.kv_tokens_budget:
        yield _gauge(
            "kv_cache_usage_perc", "KV tokens used / budget (0..1).", room.kv_tokens_used / room.kv_tokens_budget
        )
    for name, path, text in STATS_COUNTERS:
        value = _field(stats, path)
        if value is not None:
            yield CounterMetricFamily(PREFIX + name, text, value=value)
    yield from _chip_gauges(stats.scheduler.chips if stats.scheduler is not None else ())


def _chip_gauges(chips: tuple[ChipLoad, ...]) -> Iterator[GaugeMetricFamily]:
    """Per-TPU load of a sail engine over several chips (`--dev_ids 0 1 2`), labelled by TPU id."""
    if not chips:
        return
    up = GaugeMetricFamily(PREFIX + "tpu_up", "1 while a TPU of --dev_ids serves; 0 once it is out.", labels=["tpu"])
    busy = GaugeMetricFamily(PREFIX + "tpu_sequences_in_use", "KV slots in use on a TPU.", labels=["tpu"])
    slots = GaugeMetricFamily(PREFIX + "tpu_sequences", "KV slots a TPU holds (--max-running).", labels=["tpu"])
    for chip in chips:
        tpu = str(chip.tpu)
        up.add_metric([tpu], 1 if chip.alive else 0)
        busy.add_metric([tpu], chip.busy)
        slots.add_metric([tpu], chip.slots)
    yield from (up, busy, slots)


def _field(stats: BackendStats, path: str) -> float | None:
    """The number at `path` (dotted fields) of `stats`; None where a record on the way is absent."""
    value: Any = stats
    for name in path.split("."):
        value = getattr(value, name)
        if value is None:
            return None
    return float(value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, text, value=value)


# ---- the process-wide instance and the observer hook every answer passes through ----

_lock = threading.Lock()
_process: ServingMetrics | None = None
_observers: list[ServingMetrics] = []


def process_metrics() -> ServingMetrics:
    """The metrics of this process (the page server's /metrics), built on first use."""
    global _process
    with _lock:
        if _process is None:
            _process = ServingMetrics()
            _observers.append(_process)
        return _process


def observe_answer(source: str, stats: TurnStats) -> None:
    """Count one finished answer in every attached registry (ChatClient calls this once per answer;
    a process that never built its metrics pays nothing)."""
    for metrics in tuple(_observers):
        metrics.observe(source, stats)


def attach(metrics: ServingMetrics) -> None:
    """Let `metrics` (a test's own registry) observe answers too, until `detach`."""
    with _lock:
        _observers.append(metrics)


def detach(metrics: ServingMetrics) -> None:
    with _lock:
        if metrics in _observers:
            _observers.remove(metrics)
