"""A real `streamlit run` on a free 127.0.0.1 port and Debian's chromium driven by playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run web_demo.py` (or another `script`) as a user starts it; stopped by the test."""

    def __init__(self, *flags: str, script: Path = REPO / "web_demo.py") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(REPO / f".e2e-server-{self.port}.log", "w+")  # noqa: SIM115
        cmd = [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", "127.0.0.1", "--server.port", str(self.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--", *flags,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def save_screenshot(page, name: str) -> None:  # noqa: ANN001
    """Refresh pics/NAME only when asked (EDGECHAT_SCREENSHOTS=1): a test run leaves the tree clean."""
    if os.environ.get("EDGECHAT_SCREENSHOTS"):
        page.screenshot(path=str(REPO / "pics" / name), full_page=True)


def require_chromium() -> None:
    """Skip without Debian's chromium, except where CI says the browser tests must run."""
    if not CHROMIUM.exists():
        if os.environ.get("EDGECHAT_REQUIRE_BROWSER"):
            pytest.fail("Debian chromium is required here: apt-get install chromium")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--temperature", "0", "--max-new-tokens", "300", "--context-length", "1024", "--max-sessions", "4")
    yield s
    s.stop()
