"""The short CI variant of bench/load.py: three people in real browsers, two turns each."""

from __future__ import annotations

import asyncio

import pytest

from harness.load import run
from tests.e2e.conftest import require_chromium


@pytest.mark.slow
def test_three_people_two_turns_no_errors_no_cross_talk_no_stalls() -> None:
    require_chromium()
    flags = ["--temperature", "0", "--max-new-tokens", "48"]
    # A stall is a page whose main area does not change for 60 s while its person waits; a slow
    # answer that still streams is not one (harness/load.py). The whole room is bounded by 240 s.
    result = asyncio.run(run(3, 2, 240.0, flags, stall_s=60.0))
    print("stalls:", result["stall_examples"])  # shown by pytest when the test fails
    assert result["completed_turns"] == 6, result
    assert result["errors"] == 0 and result["cross_talk"] == 0, result
    assert result["stalls"] == 0, result["stall_examples"]
    assert result["server_rss_after_mib"] > 0
