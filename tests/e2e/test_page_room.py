"""A room that asks at once, played at Streamlit's own protocol (harness.streamlit_socket.Person: one
websocket session, cookies and client address per person, the page's periodic reruns as a browser
sends them), on a quiet box made to look loaded where it matters."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from harness.servers import Server, hook_env
from harness.streamlit_socket import Person, answer

LONG = "Write a long story about a dragon and a knight."  # greedy: runs to --max-new-tokens
LATE_S = 7.0  # each page's script run starts this long after its question: later than the old 5 s backstop


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
        assert (server.metric("edgechat:requests_total", finished_reason="length", source="page") or 0) == 4
        assert (server.metric("edgechat:requests_total", finished_reason="cancelled", source="page") or 0) == 0
    finally:
        server.stop()


def ask_api(server: Server, forwarded_for: str) -> int:
    """One short /v1 answer from this machine with an X-Forwarded-For header; the HTTP status."""
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "X-Forwarded-For": forwarded_for},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


async def two_people_ask(server: Server) -> list[dict]:
    tabs = [Person(server.url, "10.79.0.1"), Person(server.url, "10.79.0.2")]
    try:
        for tab in tabs:
            await tab.open()
        outcomes = []
        for i, tab in enumerate(tabs):
            await tab.ask(f"[p{i}] What is 2+2?")
            outcomes.append(await answer(tab, 0, timeout=60))
        return outcomes
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)


def test_x_forwarded_for_from_this_machine_is_not_believed_without_trusted_proxy() -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default; edgechat only from --trusted-proxy.
    Without it, two "people" behind one local tunnel are one address: with one question a minute,
    the second is refused, on /v1 and on the page alike."""
    server = Server("--rate-limit", "1", "--max-new-tokens", "8", "--context-length", "1024",
                    env={"EDGECHAT_TRUSTED_PROXY": ""})  # fmt: skip
    try:
        assert [ask_api(server, "10.79.1.1"), ask_api(server, "10.79.1.2")] == [200, 429]
    finally:
        server.stop()
    server = Server("--rate-limit", "1", "--max-new-tokens", "8", "--context-length", "1024",
                    env={"EDGECHAT_TRUSTED_PROXY": ""})  # fmt: skip
    try:
        outcomes = asyncio.run(two_people_ask(server))
        assert [o["outcome"] for o in outcomes] == ["completed", "refused"], outcomes
    finally:
        server.stop()


async def turns(server: Server, people: int, rounds: int, tick_s: float) -> tuple[list[dict], int]:
    tabs = [Person(server.url, f"10.80.0.{i + 1}", tick_s=tick_s) for i in range(people)]
    outcomes: list[dict] = []
    try:
        await asyncio.gather(*(tab.open() for tab in tabs))
        for turn in range(rounds):
            await asyncio.gather(*(tab.ask(f"[p{i}] What is {turn}+2?") for i, tab in enumerate(tabs)))
            outcomes += await asyncio.gather(*(answer(tab, turn, timeout=90, stall_s=15) for tab in tabs))
            if any(o["outcome"] != "completed" for o in outcomes):
                break
        return outcomes, sum(tab.view.lost_run_ends for tab in tabs)
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)


def test_the_end_of_a_run_reaches_a_page_whose_event_loop_is_behind() -> None:
    """Every periodic rerun the page asks for, sent three times as often as a browser would, is
    handled by an event loop that is behind by the rest of the script run it arrived in
    (harness/lateloop): each answer's last run still reaches its page (its stats line, the input
    enabled again) and no run's end is dropped. A fragment rerun handled as a run ended used to
    start a new ScriptRunner, and Streamlit dropped the ended run's last messages."""
    server = Server("--temperature", "0", "--max-new-tokens", "16", "--context-length", "1024",
                    env=hook_env("lateloop", EDGECHAT_LATE_FRAGMENT_S="1"))  # fmt: skip
    try:
        outcomes, lost = asyncio.run(turns(server, 3, 3, tick_s=0.3))
        assert [o["outcome"] for o in outcomes] == ["completed"] * 9 and lost == 0, (lost, outcomes)
    finally:
        server.stop()
