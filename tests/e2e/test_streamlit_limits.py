"""The project's .streamlit/config.toml on a real `streamlit run`, spoken to as a script would:
an upload is refused although the page has no uploader, and an oversized websocket frame closes
the connection instead of becoming widget state. With Streamlit's defaults both get through
(200 MB uploads, 25 MB frames), which the second test shows."""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from harness.servers import free_port
from tests.conftest import REPO

PAGE = "tests/e2e/markdown_page.py"
DEFAULTS = ["--server.maxUploadSize", "200", "--server.maxWidgetStateSize", "25", "--server.maxMessageSize", "200"]


def probe(*flags: str) -> tuple[int, int | None]:
    """(HTTP status of a 10-byte upload, websocket close code after a 2 MB frame; None: accepted)."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", PAGE, "--server.address", "127.0.0.1", "--server.port", str(port)]
    env = {**os.environ, "EDGECHAT_TEST_SINK": "127.0.0.1:9"}
    proc = subprocess.Popen([*cmd, *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.monotonic() + 60
        while True:  # the health route also sets the XSRF cookie a real browser gets
            try:
                opener.open(url + "/_stcore/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("streamlit did not start") from None
                time.sleep(0.3)
        xsrf = next(c.value for c in jar if c.name == "_streamlit_xsrf")

        async def until_run_ends(ws) -> str:  # noqa: ANN001
            """Read one script run's messages; the session id if the run announced one."""
            session_id = ""
            while True:
                msg = ForwardMsg()
                msg.ParseFromString(await asyncio.wait_for(ws.recv(), 60))
                if msg.HasField("new_session"):
                    session_id = msg.new_session.initialize.session_id
                if msg.HasField("script_finished"):
                    return session_id

        async def session() -> tuple[int, int | None]:
            ws_url = f"ws://127.0.0.1:{port}/_stcore/stream"
            cookie = {"Cookie": f"_streamlit_xsrf={xsrf}"}
            async with websockets.connect(ws_url, subprotocols=["streamlit", xsrf], additional_headers=cookie) as ws:
                hello = BackMsg()
                hello.rerun_script.query_string = ""
                await ws.send(hello.SerializeToString())
                session_id = await until_run_ends(ws)
                status = await asyncio.to_thread(upload, url, session_id, xsrf)
                big = BackMsg()
                big.rerun_script.query_string = "x" * 2_000_000
                await ws.send(big.SerializeToString())
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
