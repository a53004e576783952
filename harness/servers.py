"""`streamlit run web_demo.py` as a user starts it, on a free 127.0.0.1 port; stopped by its owner.
Also the free port and a small in-thread HTTP server that tests and benches share."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """The standard library's HTTP server for `handler` on a free 127.0.0.1 port (`address`), served
    from a daemon thread until `close()`: a stand-in peer (a sink, a model server) inside a test."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answers(proc: subprocess.Popen, url: str, timeout_s: float, context: ssl.SSLContext | None = None) -> bool:
    """Whether the server `proc` answers 200 at `url` within `timeout_s` (False once it exited);
    `context` for an https URL."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
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
    """`streamlit run web_demo.py` (or another `script`) with `flags` after `--` and Streamlit's own
    `streamlit_options` before it. Its saved chats go to a fresh temporary folder
    (EDGECHAT_DATA_DIR) unless `data_dir` names one to reuse (a restart test), and its output to
    a log file read by `output()`. With `--tls` among the flags its URL is https."""

    def __init__(
        self,
        *flags: str,
        script: Path = REPO / "web_demo.py",
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        streamlit_options: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.tls = "--tls" in flags or "--tls-cert" in flags
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self._own_data = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="edgechat-data-"))
        self.log = open(REPO / f".e2e-server-{self.port}.log", "w+")  # noqa: SIM115
        cmd = [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", "127.0.0.1", "--server.port", str(self.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", *streamlit_options,
            "--", *flags,
        ]  # fmt: skip
        # Browsers of tests and benches all connect from 127.0.0.1: harness.browser.person() gives
        # each its own address in X-Forwarded-For, trusted from there (as from a reverse proxy).
        base = {"EDGECHAT_DATA_DIR": str(self.data_dir), "EDGECHAT_TRUSTED_PROXY": "127.0.0.1"}
        child_env = {**_environ(), **base, **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=child_env)
        if answers(self.proc, self.url + "/_stcore/health", START_TIMEOUT_S, self.ssl_context()):
            return
        output = self.output()
        self.stop()
        raise RuntimeError(f"streamlit did not start within {START_TIMEOUT_S:.0f} s: {output[-2000:]}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """For a --tls server: a client context that takes its self-signed certificate unchecked
        (tests compare its fingerprint instead)."""
        if not self.tls:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the server's /metrics (`edgechat:requests_total`, finished_reason=...); None
        when there is no such sample."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        end(self.proc)
        if not self.log.closed:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def hook_env(folder: str, **env: str) -> dict[str, str]:
    """Environment for a Server that loads harness/FOLDER/sitecustomize.py (a trace, slow runs), with
    that hook's own variables."""
    import os

    path = os.pathsep.join(p for p in (str(REPO / "harness" / folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **env}


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
