"""Streamlit's `clear_cache` message, sent by a script straight to the websocket 20 times with a
rerun after each (the backend honours it whatever the toolbar shows): the model is not loaded
again. The runtime lives outside `st.cache_resource`, so /healthz keeps the same `loaded_at` and
the server's memory stays where it was; a reload per message would add a whole model each time."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from harness.memory import rss_mib
from harness.servers import Server
from harness.streamlit_socket import browser_cookies, connect, rerun_message, until_run_ends
from tests.e2e.conftest import server_fixture

CLEARS = 20
RSS_SLACK_MIB = 60  # one more loaded runtime (model + KV) is several hundred MiB


server = server_fixture("--context-length", "1024", "--max-running", "4")


def healthz(server: Server) -> dict:
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as r:
        return json.loads(r.read())


def clear_cache_and_rerun(server: Server, times: int) -> int:
    """Open one websocket session, run the page, then `times` x (clear_cache, rerun); the number of
    script runs that finished."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    cookies, xsrf = browser_cookies(server.url)
    clear = BackMsg()
    clear.clear_cache = True

    async def session() -> int:
        async with connect(server.url, cookies, xsrf) as ws:
            await ws.send(rerun_message())
            await until_run_ends(ws)
            finished = 1
            for _ in range(times):
                await ws.send(clear.SerializeToString())
                await ws.send(rerun_message())
                await until_run_ends(ws)
                finished += 1
            return finished

    return asyncio.run(session())


def test_clear_cache_from_a_script_does_not_load_the_model_again(server: Server) -> None:
    before = healthz(server)
    assert before["alive"] is True
    clear_cache_and_rerun(server, 1)  # the page's first run settles its own caches
    rss_before = rss_mib(server.proc.pid)
    assert clear_cache_and_rerun(server, CLEARS) == CLEARS + 1
    after = healthz(server)
    assert after["alive"] is True and after["loaded_at"] == before["loaded_at"], (before, after)
    grown = rss_mib(server.proc.pid) - rss_before
    assert grown < RSS_SLACK_MIB, f"server memory grew {grown:.0f} MiB over {CLEARS} clear_cache messages"
