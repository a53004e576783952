"""A room of people chatting with one runtime, as the page drives it: each person is a thread with
its own client (`edgechat.clients.client_for`, as the page builds it), asking T questions and keeping the history.
Used by bench/room.py (the figures of issue 11) and tests/test_room.py (a small room in CI).

Answers are greedy and exactly `tokens` long (the stop ids are switched off on the room's own
backend over the runtime's scheduler), so every configuration does the same work.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgechat.backend import LocalBackend
from edgechat.clients import client_for
from edgechat.runtime import Runtime
from edgechat.stats import BackendStats
from edgechat.templates import ChatTokenizer
from edgechat.types import Message, SamplingParams
from harness.memory import rss_mib

SYSTEM = "You are a helpful assistant."
TOPICS = [
    "the sea", "dragons", "bread", "lighthouses", "the moon", "cats", "rain", "trains", "chess", "gardens",
    "coffee", "winter", "robots", "music", "bees", "volcanoes", "maps", "deserts", "clocks", "owls", "kites",
    "snow", "honey", "rivers", "glass", "trees", "bridges", "stars", "salt", "paper", "wind", "ice",
]  # fmt: skip
FOLLOW_UPS = [
    "Tell me something interesting about {topic}.",
    "Why is that so?",
    "Can you give an example?",
    "What do most people get wrong about {topic}?",
    "Summarize what you told me in one sentence.",
    "What else should I know?",
]


def handout(words: int = 600) -> str:
    """A workshop handout of `words` words (issue 25's room: every system prompt starts with it)."""
    parts = ["Workshop handout. Read this before you ask anything, and use it in your answers where it helps."]
    n = 0
    while sum(len(p.split()) for p in parts) < words:
        topic = TOPICS[n % len(TOPICS)]
        parts.append(
            f"Section {n + 1}, on {topic}: people have studied {topic} for a long time, and the notes for this "
            f"part list three facts about {topic}, two open questions and one small exercise that each group "
            "should try in ten minutes before the break."
        )
        n += 1
    return " ".join(" ".join(parts).split()[:words])


ENGINE_COUNTERS = (
    "parks", "turns_reused", "turns_restored", "turns_reprefilled", "restore_failures", "slices", "turns_shared",
    "prompt_tokens_reused", "prompt_tokens_shared", "prompt_tokens_prefilled",
)  # fmt: skip


def question(person: int, turn: int) -> str:
    """Person-specific: each person has a topic, so no two prompts share more than the system prompt."""
    topic = TOPICS[person % len(TOPICS)]
    if person >= len(TOPICS):
        topic = f"{topic} (part {person // len(TOPICS) + 1})"
    return FOLLOW_UPS[turn % len(FOLLOW_UPS)].format(topic=topic)


@dataclass
class Person:
    ftl: list[float | None] = field(default_factory=list)  # first-token latency per turn
    prompt_tokens: list[int] = field(default_factory=list)
    reused_tokens: list[int] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def room_runtime(runtime: Runtime) -> Runtime:
    """The runtime with its own scheduler behind a backend whose answers never stop early."""
    chat = ChatTokenizer(runtime.tokenizer.tokenizer, runtime.tokenizer.template)  # type: ignore[union-attr]
    chat.stop_ids = frozenset()
    return replace(runtime, backend=LocalBackend(runtime.backend.scheduler, chat, runtime.info))  # type: ignore[attr-defined]


def run_room(
    runtime: Runtime,
    people: int,
    turns: int,
    tokens: int,
    timeout_s: float = 1800,
    system: str = SYSTEM,
    join_gap_s: float = 0.0,
) -> dict[str, Any]:
    """Everyone starts together, or person i `join_gap_s` x i seconds after the first; returns the
    room's figures (see bench/room.py for their meaning)."""
    room = room_runtime(runtime)
    scheduler = runtime.backend.scheduler  # type: ignore[attr-defined]
    before = scheduler.stats()
    results = [Person() for _ in range(people)]
    start = threading.Barrier(people + 1)
    rss_peak = [rss_mib()]

    def person(i: int) -> None:
        me = results[i]
        sampling = SamplingParams(temperature=0.0, max_new_tokens=tokens)
        client = client_for(room, sampling=sampling, system=system)
        history: list[Message] = []
        start.wait(timeout_s)
        time.sleep(i * join_gap_s)
        try:
            for turn in range(turns):
                q = question(i, turn)
                reply = "".join(client.chat_stream(q, history))
                stats = client.last_stats
                me.ftl.append(stats.first_token_s)
                me.prompt_tokens.append(stats.prompt_tokens)
                me.reused_tokens.append(stats.reused_tokens)
                me.tokens += stats.completion_tokens
                if stats.error or stats.completion_tokens != tokens:
                    me.errors.append(stats.error or f"{stats.completion_tokens} of {tokens} tokens")
                history += [Message(role="user", content=q), Message(role="assistant", content=reply)]
        except Exception as err:  # noqa: BLE001 — a crash is a room error, reported with the rest
            me.errors.append(f"{type(err).__name__}: {err}")
        finally:
            client.backend.forget_cache(client.cache_key)  # the tab closes: its cache goes

    threads = [threading.Thread(target=person, args=(i,), daemon=True) for i in range(people)]
    for t in threads:
        t.start()
    start.wait(timeout_s)
    began = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline:
            t.join(1.0)
            rss_peak.append(rss_mib())
    wall = time.perf_counter() - began
    hung = sum(t.is_alive() for t in threads)
    after = scheduler.stats()
    return summarize(results, turns, wall, hung, before, after, max(rss_peak))


def counters(stats: BackendStats) -> dict[str, float]:
    """The scheduler's and the room's figures by field name (both local: the runtime is ours)."""
    assert stats.scheduler is not None
    return {**asdict(stats.scheduler), **asdict(stats.scheduler.room)}


def summarize(
    results: list[Person], turns: int, wall: float, hung: int, before: BackendStats, after: BackendStats, rss: float
) -> dict[str, Any]:
    first, last = counters(before), counters(after)
    per_turn = []
    later = [(p.prompt_tokens[t], p.reused_tokens[t]) for p in results for t in range(1, len(p.prompt_tokens))]
    for turn in range(turns):
        ftl = sorted(p.ftl[turn] for p in results if len(p.ftl) > turn and p.ftl[turn] is not None)
        per_turn.append({"ftl_p50_s": _pct(ftl, 0.5), "ftl_p95_s": _pct(ftl, 0.95), "answers": len(ftl)})
    errors = [e for p in results for e in p.errors]
    return {
        "people": len(results),
        "turns": turns,
        "wall_s": round(wall, 2),
        "aggregate_tps": round(sum(p.tokens for p in results) / wall, 1) if wall > 0 else 0.0,
        "per_turn": per_turn,
        # prompt tokens of turns 2.. that came from the person's cache (turn 1 has nothing to reuse)
        "reused_share": round(sum(r for _, r in later) / max(1, sum(n for n, _ in later)), 3),
        "turns_without_reuse": sum(r == 0 for _, r in later),
        "prompt_tokens_turn1": sum(p.prompt_tokens[0] for p in results if p.prompt_tokens),
        "later_turns_new_tokens": sum(n - r for n, r in later),  # what a later turn must read, at best
        "errors": len(errors) + hung,
        "error_samples": errors[:3],
        "engine": {k: last[k] - first[k] for k in ENGINE_COUNTERS},
        "kv_tokens_budget": last["kv_tokens_budget"],
        "sequences": last["max_sequences"],
        "context_per_answer": last["context_per_answer"],
        "parked_mib_end": round(last["parked_mib"], 1),
        "rss_peak_mib": round(rss, 1),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if q == 0.5:
        return round(statistics.median(values), 3)
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 3)
