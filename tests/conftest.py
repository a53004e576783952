"""Shared fixtures: ONE real runtime on the embedded default model for the whole test run, one
engine factory, one way to run the terminal, and the CI rule that nothing may be skipped. Also the
one place for constants tests share (GREEDY: a file that needs another answer length derives it
with dataclasses.replace); ports and page servers are harness/servers.py's, the e2e server
fixtures tests/e2e/conftest.py's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgechat.config import parse_settings  # noqa: E402
from edgechat.config_values import default_model_path  # noqa: E402
from edgechat.runtime import Runtime, load_runtime  # noqa: E402
from edgechat.scheduler import RequestEvents  # noqa: E402
from edgechat.types import Failed, Finished, SamplingParams, Token  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=48)
CI = bool(os.environ.get("EDGECHAT_CI"))  # .ci/run sets it: every test must run, none may skip
# Saved chats of the processes tests start go here, never into the home folder.
TEST_DATA_HOME = Path(tempfile.mkdtemp(prefix="edgechat-tests-"))


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    rt = load_runtime(parse_settings(["--context-length", "1024", "--max-sessions", "4"], env={}))
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture
def make_engine(model_path: Path) -> Iterator[Callable[..., object]]:
    """A llama.cpp engine of the test's own on the embedded model (context 512, one sequence
    unless told), closed after the test."""
    from edgechat.engines.llamacpp import LlamaCppEngine, LlamaCppModel

    made: list[LlamaCppEngine] = []

    def make(cls: type[LlamaCppEngine] = LlamaCppEngine, **options: object) -> LlamaCppEngine:
        engine = cls(LlamaCppModel(model_path), **{"context_length": 512, "max_sequences": 1, **options})  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def run_terminal(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python3 baichuan2.py ARGS` as a user runs it, in a clean environment whose saved chats go to
    a temporary folder."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "XDG_DATA_HOME": str(TEST_DATA_HOME)}
    return subprocess.run(
        [sys.executable, str(REPO / "baichuan2.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**base, **(env or {})},
    )


def answer_ids(handle: RequestEvents, wait_s: float = 120.0) -> list[int]:
    """A scheduler answer's token ids, read to its end within `wait_s`; a failure fails the test."""
    end, out = time.monotonic() + wait_s, []
    for event in handle:
        assert time.monotonic() < end, "no end of the answer in time"
        if isinstance(event, Token):
            out.append(event.id)
        elif isinstance(event, Failed):
            raise AssertionError(event.message)
        elif isinstance(event, Finished):
            return out
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests carry the `browser` marker (`-m "not browser"` leaves them out locally)."""
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI a skip is a failure: a missing chromium or ../shared tokenizer must not pass unseen."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
