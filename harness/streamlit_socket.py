"""Speaking Streamlit's websocket protocol the way its frontend does, for tests and benches that play
people without browsers: the cookies a browser holds, a connection, the end of a script run, and
`Person`, one browser tab of the chat page (its own session, address, questions and the periodic
reruns the page asks for), with a model of what that tab would show.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

RUN_TIMEOUT_S = 60  # the longest one script run may take to end
STATS = re.compile(r"first token ([\d.]+) s · ([\d.]+) tok/s · (\d+) tokens")
INTERRUPTED = "interrupted when the page went away"
CURSOR = " ▌"  # after the text of an answer being written (edgechat.page.messages)
MAIN, SIDEBAR = 0, 1  # Streamlit's root containers (delta_path[0]); the chat input sits in another


def browser_cookies(url: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(Cookie header, XSRF token) after a browser's first requests: the page (edgechat's owner
    cookie) and the health route (Streamlit's XSRF cookie)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.addheaders = list((headers or {}).items())
    opener.open(url + "/", timeout=10).read()
    opener.open(url + "/_stcore/health", timeout=10).read()
    xsrf = next(c.value for c in jar if c.name == "_streamlit_xsrf")
    return "; ".join(f"{c.name}={c.value}" for c in jar), xsrf


def connect(url: str, cookies: str, xsrf: str, headers: dict[str, str] | None = None) -> Any:
    """The session's websocket, with the XSRF token in the subprotocol as the frontend sends it."""
    import websockets

    ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
    return websockets.connect(
        ws_url,
        subprotocols=["streamlit", xsrf],
        additional_headers={"Cookie": cookies, **(headers or {})},
        max_size=None,
        open_timeout=RUN_TIMEOUT_S,
    )


def rerun_message(
    query_string: str = "", widgets: list[Any] | None = None, fragment_id: str = "", auto: bool = False
) -> bytes:
    from streamlit.proto.BackMsg_pb2 import BackMsg

    msg = BackMsg()
    msg.rerun_script.query_string = query_string
    msg.rerun_script.fragment_id = fragment_id
    msg.rerun_script.is_auto_rerun = auto
    if widgets:
        msg.rerun_script.widget_states.widgets.extend(widgets)
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


@dataclass
class Node:
    """One element or block as the frontend holds it: what it shows and which run drew it."""

    kind: str
    text: str = ""
    run: str = ""
    fragment: str = ""
    role: str = ""  # chat_message blocks: "user" / "assistant"
    disabled: bool = False
    widget_id: str = ""


@dataclass
class PageView:
    """What one tab would show, rebuilt from the ForwardMsgs as Streamlit's frontend does: elements by
    delta path, and after a full run ends, the elements that run did not draw are gone."""

    nodes: dict[tuple[int, ...], Node] = field(default_factory=dict)
    run: str = ""
    full_run_open: bool = False  # a full run started and its script_finished has not come
    lost_run_ends: int = 0  # a fragment run began while a full run had not ended (its end was dropped)
    fragments: dict[str, float] = field(default_factory=dict)  # fragment id -> auto-rerun interval
    session_id: str = ""
    finished_full_runs: int = 0

    def apply(self, msg: Any) -> None:  # noqa: C901 — one branch per message type, as the frontend's
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.session_id = msg.new_session.initialize.session_id or self.session_id
            self.run = msg.metadata.run.script_run_id
            if msg.metadata.run.fragment_ids:
                if self.full_run_open:
                    self.lost_run_ends += 1
                    self.full_run_open = False
            else:
                self.full_run_open = True
        elif kind == "script_finished":
            from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

            if msg.script_finished != ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
                self.full_run_open = False
            if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                self.finished_full_runs += 1
                self.nodes = {p: n for p, n in self.nodes.items() if n.run == self.run or n.fragment}
        elif kind == "delta":
            self._delta(tuple(msg.metadata.delta_path), msg.delta)
        elif kind == "auto_rerun":
            self.fragments[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
        elif kind == "stop_auto_rerun":
            for fragment_id in msg.stop_auto_rerun.fragment_ids:
                self.fragments.pop(fragment_id, None)

    def _delta(self, path: tuple[int, ...], delta: Any) -> None:
        which = delta.WhichOneof("type")
        node = Node(kind=which or "", run=self.run, fragment=delta.fragment_id)
        if which == "add_block":
            block = delta.add_block
            node.kind = block.WhichOneof("type") or "block"
            if node.kind == "chat_message":
                node.role = block.chat_message.name
        elif which == "new_element":
            el = delta.new_element
            node.kind = el.WhichOneof("type") or ""
            proto = getattr(el, node.kind, None) if node.kind else None
            node.text = str(getattr(proto, "body", "") or getattr(proto, "label", "") or "")
            node.disabled = bool(getattr(proto, "disabled", False))
            node.widget_id = str(getattr(proto, "id", "") or "")
        else:
            return
        self.nodes[path] = node

    # ---- what the tab shows ----

    def chat_input(self) -> Node | None:
        return next((n for n in self.nodes.values() if n.kind == "chat_input"), None)

    def messages(self) -> list[tuple[str, str]]:
        """The chat, top to bottom: (role, every text inside that message joined by newlines)."""
        out: list[tuple[str, str]] = []
        blocks = sorted(p for p, n in self.nodes.items() if p[0] == MAIN and n.kind == "chat_message")
        for path in blocks:
            texts = [n.text for p, n in sorted(self.nodes.items()) if p[: len(path)] == path and p != path and n.text]
            out.append((self.nodes[path].role, "\n".join(texts)))
        return out

    def answer_shown(self, turn: int) -> bool:
        """The answer to question `turn` shows text: streaming (before its cursor) or finished."""
        blocks = sorted(p for p, n in self.nodes.items() if p[0] == MAIN and n.kind == "chat_message")
        answers = [p for p in blocks if self.nodes[p].role == "assistant"]
        if len(answers) <= turn:
            return False
        path = answers[turn]
        texts = [n.text for p, n in self.nodes.items() if p[: len(path)] == path and n.kind == "markdown"]
        return any(t.endswith(CURSOR) and t[: -len(CURSOR)].strip() or STATS.search(t) for t in texts)

    def main_text(self) -> str:
        return "\n".join(n.text for p, n in sorted(self.nodes.items()) if p[0] == MAIN and n.text)


class Person:
    """One browser tab of the chat page over Streamlit's websocket: its own cookies and client address
    (X-Forwarded-For, believed from 127.0.0.1 by a harness Server), the page's periodic fragment
    reruns as the frontend sends them (`tick_s` overrides their interval), and `poll` HTTP paths
    fetched once a second as the page's own script would."""

    def __init__(self, url: str, address: str, tick_s: float | None = None, poll: tuple[str, ...] = ()) -> None:
        self.url, self.address, self.tick_s, self.poll = url, address, tick_s, poll
        self.view = PageView()
        self.changed = asyncio.Event()
        self.last_change = time.monotonic()
        self.asked_at = 0.0
        self._ws: Any = None
        self._tasks: list[asyncio.Task] = []
        self._fragment_timers: dict[str, asyncio.Task] = {}

    async def open(self) -> None:
        headers = {"X-Forwarded-For": self.address}
        cookies, xsrf = await asyncio.to_thread(browser_cookies, self.url, headers)
        self._ws = await connect(self.url, cookies, xsrf, headers).__aenter__()
        self._tasks.append(asyncio.create_task(self._read()))
        for path in self.poll:
            self._tasks.append(asyncio.create_task(self._poll(path, headers)))
        await self._ws.send(rerun_message())
        await self.until(lambda v: v.finished_full_runs >= 1 and v.chat_input() is not None, RUN_TIMEOUT_S)

    async def close(self) -> None:
        for task in [*self._tasks, *self._fragment_timers.values()]:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def ask(self, text: str) -> None:
        """Type a question into the chat input and press Enter (the input must be enabled)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        box = self.view.chat_input()
        assert box is not None and not box.disabled, "the chat input is not ready"
        state = WidgetState(id=box.widget_id)
        state.chat_input_value.data = text
        self.asked_at = time.monotonic()
        await self._ws.send(rerun_message(widgets=[state]))

    async def until(self, condition: Any, timeout: float) -> bool:
        """Wait until `condition(view)` holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition(self.view):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        async for data in self._ws:
            msg = ForwardMsg.FromString(data)
            self.view.apply(msg)
            if msg.WhichOneof("type") == "auto_rerun":
                self._tick(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
            if msg.WhichOneof("type") in ("delta", "script_finished"):
                self.last_change = time.monotonic()
            self.changed.set()

    def _tick(self, fragment_id: str, interval: float) -> None:
        """The frontend's setInterval for a `run_every` fragment: a fragment rerun every interval,
        whatever the page is doing."""
        if fragment_id in self._fragment_timers:
            return

        async def timer() -> None:
            while True:
                await asyncio.sleep(self.tick_s or interval)
                if fragment_id not in self.view.fragments:
                    return
                await self._ws.send(rerun_message(fragment_id=fragment_id, auto=True))

        self._fragment_timers[fragment_id] = asyncio.create_task(timer())

    async def _poll(self, path: str, headers: dict[str, str]) -> None:
        def get() -> None:
            request = urllib.request.Request(self.url + path, headers=headers)
            with urllib.request.urlopen(request, timeout=10) as r:
                r.read()

        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(get)
            except OSError:
                pass


async def answer(person: Person, turn: int, timeout: float, stall_s: float = 30.0) -> dict[str, Any]:
    """Wait for the answer of question `turn` (0-based) to settle on the page: the outcome as a person
    sees it — completed (its stats line, the input enabled again), interrupted, refused (a warning
    instead of an answer), lost_run_end, or timeout — with the stats line's figures."""
    start = person.asked_at or time.monotonic()
    seen: list[float] = []

    def settled(view: PageView) -> bool:
        if not seen and view.answer_shown(turn):
            seen.append(time.monotonic())
        box = view.chat_input()
        ready = box is not None and not box.disabled and not view.full_run_open
        answers = [text for role, text in view.messages() if role == "assistant"]
        ended = len(answers) > turn and (STATS.search(answers[turn]) or INTERRUPTED in answers[turn])
        return ready and bool(ended or _refused(view, turn))

    deadline = start + timeout
    ok = False
    while time.monotonic() < deadline:
        ok = await person.until(settled, min(5.0, deadline - time.monotonic()))
        if ok or time.monotonic() - person.last_change > stall_s:
            break
    view = person.view
    answers = [text for role, text in view.messages() if role == "assistant"]
    text = answers[turn] if len(answers) > turn else ""
    match = STATS.search(text)
    if INTERRUPTED in text:
        outcome = "interrupted"
    elif ok and match:
        outcome = "completed"
    elif view.lost_run_ends:  # the page shows a run that never ended: it waits for its person
        outcome = "lost_run_end"
    elif ok:
        outcome = "refused"
    else:
        outcome = "timeout"
    return {
        "outcome": outcome,
        "first_token_s": float(match.group(1)) if match else None,  # the engine's, from the question's arrival
        "first_text_s": round(seen[0] - start, 3) if seen else None,  # the page's, from pressing Enter
        "tokens": int(match.group(3)) if match else 0,
        "waited_s": round(time.monotonic() - start, 2),
        "text": text,
    }


def _refused(view: PageView, turn: int) -> bool:
    """A warning shown instead of the answer (rate limit, too many at once, the queue full)."""
    users = [text for role, text in view.messages() if role == "user"]
    alerts = [n for p, n in view.nodes.items() if p[0] == MAIN and n.kind == "alert"]
    return len(users) <= turn and bool(alerts)
