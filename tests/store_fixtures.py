"""What the tests/test_store_*.py files share: a clock the test moves by hand, the `db`, `clock` and
`store` fixtures (a real SQLite file in the test's temporary folder), a fresh owner, and second
processes (tests/store_worker.py) with a bounded read of their JSON lines. A test file imports the
fixtures as `db_fixture`, `clock_fixture`, `store_fixture` and asks for `db`, `clock`, `store`
(imported under the parameter's own name, a fixture would read to ruff as a redefined import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgechat.owner import Owner, new_owner_token
from edgechat.store import DB_NAME, Store, open_store
from tests.conftest import REPO

WAIT_S = 60  # bound on any wait for a thread or a child process


class Clock:
    """Time the test moves by hand (undo windows, retention), instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="db")
def db_fixture(tmp_path: Path) -> Path:
    return tmp_path / "data" / DB_NAME


@pytest.fixture(name="clock")
def clock_fixture() -> Clock:
    return Clock()


@pytest.fixture(name="store")
def store_fixture(db: Path, clock: Clock) -> Store:
    s = open_store(db, clock=clock)
    yield s
    s.close()


def owner() -> tuple[str, Owner]:
    token = new_owner_token()
    return token, Owner.from_token(token)


def worker(command: str, db: Path, *args: str, token: str = "", **popen) -> subprocess.Popen:  # noqa: ANN003
    env = {**os.environ, "EDGECHAT_TEST_OWNER": token, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_worker", command, str(db), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def read_line(proc: subprocess.Popen) -> dict:
    """The worker's next JSON line, within WAIT_S: a worker that hangs fails the test (killed)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(WAIT_S)
    if reader.is_alive():
        proc.kill()
        raise AssertionError(f"the worker printed nothing in {WAIT_S} s")
    assert lines[0], f"worker exited early with {proc.wait(WAIT_S)}"
    return json.loads(lines[0])
