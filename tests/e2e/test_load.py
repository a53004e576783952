"""The short CI variant of bench/load.py: several real browser sessions, several turns each."""

from __future__ import annotations

import asyncio

from bench.load import run
from tests.e2e.conftest import require_chromium


def test_three_sessions_two_turns_no_errors_no_cross_talk() -> None:
    require_chromium()
    flags = ["--temperature", "0", "--max-new-tokens", "48", "--max-sessions", "3"]
    result = asyncio.run(run(3, 2, 240.0, flags, stall_s=60.0))
    print("stalls:", result["stall_examples"])  # shown by pytest when the test fails; see bench/load.py
    assert result["completed_turns"] == 6, result
    assert result["errors"] == 0 and result["cross_talk"] == 0, result
    assert result["stalls"] <= 1, result["stall_examples"]
    assert result["server_rss_after_mib"] > 0
