"""Shared fixtures: ONE real runtime on the embedded default model for the whole test run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgechat.config import parse_settings  # noqa: E402
from edgechat.runtime import Runtime, load_runtime  # noqa: E402
from edgechat.types import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=48)


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    rt = load_runtime(parse_settings(["--context-length", "1024", "--max-sessions", "4"], env={}))
    yield rt
    rt.close()
