"""The project's .streamlit/config.toml on a real `streamlit run`, spoken to as a script would:
an upload is refused although the page has no uploader, and an oversized websocket frame closes
the connection instead of becoming widget state. With Streamlit's defaults both get through
(200 MB uploads, 25 MB frames), which the second test shows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from harness.servers import free_port
from harness.streamlit_socket import browser_cookies, connect, rerun_message, until_run_ends
from tests.conftest import REPO

PAGE = "tests/e2e/markdown_page.py"
DEFAULTS = ["--server.maxUploadSize", "200", "--server.maxWidgetStateSize", "25", "--server.maxMessageSize", "200"]


def probe(*flags: str) -> tuple[int, int | None]:
    """(HTTP status of a 10-byte upload, websocket close code after a 2 MB frame; None: accepted)."""
    import websockets

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", PAGE, "--server.address", "127.0.0.1", "--server.port", str(port)]
    env = {**os.environ, "EDGECHAT_TEST_SINK": "127.0.0.1:9"}
    proc = subprocess.Popen([*cmd, *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("streamlit did not start") from None
                time.sleep(0.3)
        cookies, xsrf = browser_cookies(url)

        async def session() -> tuple[int, int | None]:
            async with connect(url, cookies, xsrf) as ws:
                await ws.send(rerun_message())
                session_id = await until_run_ends(ws)
                status = await asyncio.to_thread(upload, url, session_id, xsrf)
                await ws.send(rerun_message("x" * 2_000_000))
                try:
                    await until_run_ends(ws)  # the 2 MB frame was taken as a rerun request
                    return status, None
                except websockets.ConnectionClosed as closed:
                    return status, closed.rcvd.code if closed.rcvd else None

        return asyncio.run(session())
    finally:
        proc.terminate()
        proc.wait(10)


def upload(url: str, session_id: str, xsrf: str) -> int:
    body = (
        b"--B\r\nContent-Disposition: form-data; name=file; filename=a.txt\r\n"
        b"Content-Type: text/plain\r\n\r\n0123456789\r\n--B--\r\n"
    )
    headers = {
        "Content-Type": "multipart/form-data; boundary=B",
        "X-Xsrftoken": xsrf,
        "Cookie": f"_streamlit_xsrf={xsrf}",
    }
    req = urllib.request.Request(f"{url}/_stcore/upload_file/{session_id}/f1", data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_uploads_and_oversized_frames_are_refused() -> None:
    assert probe() == (413, 1009)  # 413 File too large; 1009 Message Too Big


def test_with_streamlits_defaults_both_get_through() -> None:
    assert probe(*DEFAULTS) == (204, None)
