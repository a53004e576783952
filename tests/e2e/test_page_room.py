"""A room that asks at once, played at Streamlit's own protocol (harness.streamlit_socket.Person: one
websocket session, cookies and client address per person, the page's periodic reruns as a browser
sends them), on a quiet box made to look loaded where it matters."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from harness.servers import Server, hook_env
from harness.streamlit_socket import Person, answer

LONG = "Write a long story about a dragon and a knight."  # greedy: runs to --max-new-tokens
LATE_S = 7.0  # each page's script run starts this long after its question: later than the old 5 s backstop


def cancelled_page_answers(server: Server) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r'^edgechat_requests_total\{finished_reason="cancelled",source="page"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def room(server: Server, people: int, question: str, timeout_s: float) -> list[dict]:
    tabs = [Person(server.url, f"10.78.0.{i + 1}") for i in range(people)]
    try:
        await asyncio.gather(*(tab.open() for tab in tabs))
        await asyncio.gather(*(tab.ask(f"[p{i}] {question}") for i, tab in enumerate(tabs)))
        return list(await asyncio.gather(*(answer(tab, 0, timeout_s) for tab in tabs)))
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)


def test_late_pages_keep_their_answers() -> None:
    """Everyone asks at once and every page's script run starts LATE_S after its question (as on a
    busy box): a slow page is not a closed page, so no answer is cut."""
    server = Server(
        "--temperature", "0", "--max-new-tokens", "400", "--context-length", "1024",
        env=hook_env("slowruns", EDGECHAT_SLOW_RUN_S=str(LATE_S)),
    )  # fmt: skip
    try:
        outcomes = asyncio.run(room(server, 4, LONG, timeout_s=120))
        assert [o["outcome"] for o in outcomes] == ["completed"] * 4, [
            (o["outcome"], o["text"][-120:]) for o in outcomes
        ]
        assert all(o["tokens"] == 400 for o in outcomes), [o["tokens"] for o in outcomes]
        assert cancelled_page_answers(server) == 0
    finally:
        server.stop()
