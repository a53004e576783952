"""`streamlit run web_demo.py` as a user starts it, on a free 127.0.0.1 port; stopped by its owner."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(proc: subprocess.Popen, url: str, timeout_s: float) -> bool:
    """Whether the server `proc` answers 200 at `url` within `timeout_s` (False once it exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def end(proc: subprocess.Popen) -> None:
    """Stop a server we started: terminate, and kill it if it has not gone in 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """`streamlit run web_demo.py` (or another `script`) with `flags` after `--`. Its saved chats go
    to a fresh temporary folder (EDGECHAT_DATA_DIR) unless `data_dir` names one to reuse (a
    restart test), and its output to a log file read by `output()`."""

    def __init__(
        self,
        *flags: str,
        script: Path = REPO / "web_demo.py",
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_data = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="edgechat-data-"))
        self.log = open(REPO / f".e2e-server-{self.port}.log", "w+")  # noqa: SIM115
        cmd = [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", "127.0.0.1", "--server.port", str(self.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--", *flags,
        ]  # fmt: skip
        # Browsers of tests and benches all connect from 127.0.0.1: harness.browser.person() gives
        # each its own address in X-Forwarded-For, trusted from there (as from a reverse proxy).
        base = {"EDGECHAT_DATA_DIR": str(self.data_dir), "EDGECHAT_TRUSTED_PROXY": "127.0.0.1"}
        child_env = {**_environ(), **base, **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=child_env)
        if answers(self.proc, self.url + "/_stcore/health", START_TIMEOUT_S):
            return
        output = self.output()
        self.stop()
        raise RuntimeError(f"streamlit did not start within {START_TIMEOUT_S:.0f} s: {output[-2000:]}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        end(self.proc)
        if not self.log.closed:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
