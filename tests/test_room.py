"""A small room on real llama.cpp (issue 11's bench in miniature): more people than sequences,
two turns each. Everyone gets whole answers, and every second turn reuses the person's cache:
kept in its sequence or parked in host RAM and restored. Behaviour only; speed is bench/room.py's."""

from __future__ import annotations

from edgechat.config import parse_settings
from edgechat.runtime import load_runtime
from harness.room import run_room


def test_four_people_two_turns_on_two_sequences_all_reuse_their_cache() -> None:
    runtime = load_runtime(
        parse_settings(["--context-length", "512", "--max-running", "2", "--kv-budget", "1024"], env={})
    )
    try:
        room = run_room(runtime, people=4, turns=2, tokens=12, timeout_s=300)
    finally:
        runtime.close()
    assert room["errors"] == 0, room["error_samples"]
    assert room["sequences"] == 2 and room["turns_without_reuse"] == 0
    engine = room["engine"]
    assert engine["parks"] >= 2 and engine["turns_restored"] >= 1 and engine["restore_failures"] == 0
    assert engine["turns_reused"] + engine["turns_restored"] == 4
