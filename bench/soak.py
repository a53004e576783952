"""Soak: mixed traffic on one runtime for a set time: `python3 bench/soak.py --json --seconds 120`.

Simulated people chat for several turns, stop answers, close tabs mid-answer and start new
chats, all through the same client + scheduler path the page uses. Prints one JSON object: what
ran, errors, RSS after warm-up vs at the end (target: growth <= 5%), and whether the engine's
sequence count and KV use return to their baseline once everyone has left.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgechat.clients import client_for  # noqa: E402
from edgechat.config import parse_settings  # noqa: E402
from edgechat.runtime import Runtime, load_runtime  # noqa: E402
from edgechat.types import Message, SamplingParams  # noqa: E402
from harness.memory import rss_mib  # noqa: E402
from harness.room import counters  # noqa: E402

QUESTIONS = [
    "What is 2+2?",
    "Tell me a short story about a cat.",
    "What color is the sky on a clear day?",
    "Explain what a computer is.",
    "你好，请介绍一下你自己。",
    "Write a haiku about the sea 🌊.",
]


def person(rt: Runtime, seed: int, until: float, tally: Counter, lock: threading.Lock) -> None:
    """One simulated user: picks an action per turn, like someone at the demo would."""
    rng = random.Random(seed)
    client = client_for(rt, sampling=SamplingParams(temperature=0.7, max_new_tokens=96, seed=seed))
    history: list[Message] = []
    while time.monotonic() < until:
        question = rng.choice(QUESTIONS)
        action = rng.choices(["chat", "stop", "close_tab", "new_chat"], weights=[6, 2, 1, 1])[0]
        if action == "new_chat":
            history = []
            rt.backend.forget_cache(client.cache_key)
        stream = client.chat_stream(question, history)
        pieces: list[str] = []
        cut = rng.randint(1, 20) if action in ("stop", "close_tab") else None
        for i, piece in enumerate(stream):
            pieces.append(piece)
            if cut is not None and i >= cut:
                stream.close()  # Stop button / tab closed: the generator is closed mid-answer
                break
        if action == "close_tab":
            rt.backend.forget_cache(client.cache_key)
            client = client_for(rt, sampling=client.sampling)
            history = []
        else:
            history += [Message(role="user", content=question), Message(role="assistant", content="".join(pieces))]
            history = history[-8:]
        with lock:
            tally[action] += 1
            tally["tokens"] += client.last_stats.completion_tokens
            if client.last_stats.error:
                tally["errors"] += 1
    rt.backend.forget_cache(client.cache_key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--people", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of the run before the RSS baseline")
    args = parser.parse_args()
    # Fewer sequences than people: idle caches are parked in host RAM and restored all along.
    rt = load_runtime(parse_settings(["--max-running", "4", "--context-length", "1024"], env={}))
    baseline = rt.backend.stats()
    tally: Counter = Counter()
    lock = threading.Lock()
    start = time.monotonic()
    until = start + args.seconds
    people = [threading.Thread(target=person, args=(rt, i, until, tally, lock)) for i in range(args.people)]
    for p in people:
        p.start()
    time.sleep(args.seconds * args.warmup)
    rss_warm = rss_mib()
    rss_samples = []
    while any(p.is_alive() for p in people):
        rss_samples.append(rss_mib())
        time.sleep(1.0)
    rss_end = rss_mib()
    deadline = time.monotonic() + 5
    while (
        rt.backend.stats().scheduler.room.sequences_in_use or rt.backend.stats().scheduler.room.sessions_parked
    ) and (time.monotonic() < deadline):
        time.sleep(0.05)
    end = rt.backend.stats()
    rt.close()
    counts = counters(end)
    result = {
        "seconds": round(time.monotonic() - start, 1),
        "people": args.people,
        "actions": {k: tally[k] for k in ("chat", "stop", "close_tab", "new_chat")},
        "tokens": tally["tokens"],
        "errors": tally["errors"],
        "rss_after_warmup_mib": round(rss_warm, 1),
        "rss_max_after_warmup_mib": round(max(rss_samples, default=rss_end), 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_growth_after_warmup": round((rss_end - rss_warm) / rss_warm, 4),
        "sequences_in_use_end": end.scheduler.room.sequences_in_use,
        "kv_tokens_used_baseline": baseline.scheduler.room.kv_tokens_used,
        "kv_tokens_used_end": end.scheduler.room.kv_tokens_used,
        "sessions_parked_end": end.scheduler.room.sessions_parked,
        "parked_mib_end": round(end.scheduler.room.parked_mib, 2),
        "engine_counts": {
            k: counts[k]
            for k in ("completed", "cancelled", "errors", "refused", "parks", "turns_restored", "turns_reprefilled")
        },
    }
    result["targets_met"] = {
        "rss_growth_le_5pct": result["rss_growth_after_warmup"] <= 0.05,
        "sequences_back_to_zero": end.scheduler.room.sequences_in_use == 0,
        "kv_back_to_baseline": end.scheduler.room.kv_tokens_used == baseline.scheduler.room.kv_tokens_used,
        "nothing_left_parked": end.scheduler.room.sessions_parked == 0,
        "no_errors": tally["errors"] == 0,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
