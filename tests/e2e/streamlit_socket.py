"""Speaking Streamlit's websocket protocol the way its frontend does, for tests that play a script
sending its own messages: the cookies a browser holds, a connection, the end of a script run."""

from __future__ import annotations

import asyncio
import http.cookiejar
import urllib.request
from typing import Any

RUN_TIMEOUT_S = 60  # the longest one script run may take to end


def browser_cookies(url: str) -> tuple[str, str]:
    """(Cookie header, XSRF token) after a browser's first requests: the page (edgechat's owner
    cookie) and the health route (Streamlit's XSRF cookie)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(url + "/", timeout=10).read()
    opener.open(url + "/_stcore/health", timeout=10).read()
    xsrf = next(c.value for c in jar if c.name == "_streamlit_xsrf")
    return "; ".join(f"{c.name}={c.value}" for c in jar), xsrf


def connect(url: str, cookies: str, xsrf: str) -> Any:
    """The session's websocket, with the XSRF token in the subprotocol as the frontend sends it."""
    import websockets

    ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
    return websockets.connect(ws_url, subprotocols=["streamlit", xsrf], additional_headers={"Cookie": cookies})


def rerun_message(query_string: str = "") -> bytes:
    from streamlit.proto.BackMsg_pb2 import BackMsg

    msg = BackMsg()
    msg.rerun_script.query_string = query_string
    return msg.SerializeToString()


async def until_run_ends(ws: Any) -> str:
    """Read one script run's messages; the session id if the run announced one."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    session_id = ""
    while True:
        msg = ForwardMsg()
        msg.ParseFromString(await asyncio.wait_for(ws.recv(), RUN_TIMEOUT_S))
        if msg.HasField("new_session"):
            session_id = msg.new_session.initialize.session_id
        if msg.HasField("script_finished"):
            return session_id
