"""What a stuck page's websocket carried, decoded from Streamlit's protobufs (bench/load.py --trace).

The driver keeps each page's raw frames (time, direction, bytes) in a bounded deque and decodes
them only when a page stalls, so the tracing costs the loaded box little.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

KEEP_FRAMES = 3000
# In the page: when each websocket message reaches JavaScript (Streamlit's own listener runs right
# after), to tell a message the network delivered but the page never handled from a slow page.
JS_WS_LOG = """(() => {
  const log = window.__edgechatWs = [];
  const add = WebSocket.prototype.addEventListener;
  WebSocket.prototype.addEventListener = function (type, fn, opts) {
    if (type !== 'message') return add.call(this, type, fn, opts);
    return add.call(this, type, ev => {
      window.__edgechatWsCount = (window.__edgechatWsCount ?? 0) + 1;
      log.push([Date.now(), ev.data.byteLength ?? ev.data.length]);
      if (log.length > 5000) log.splice(0, 1000);
      return fn.call(this, ev);
    }, opts);
  };
})()"""
JS_WS_TAIL = """() => ({now: Date.now(), handled: window.__edgechatWsCount ?? 0,
  tail: (window.__edgechatWs ?? []).slice(-15)})"""


def decode(t: float, direction: str, payload: bytes | str) -> dict[str, Any]:
    """One frame as a small dict: its type and the fields that say which run it belongs to."""
    data = payload.encode() if isinstance(payload, str) else payload
    row: dict[str, Any] = {"t": round(t, 4), "dir": direction, "bytes": len(data)}
    try:
        if direction == "recv":
            msg = ForwardMsg.FromString(data)
            kind = msg.WhichOneof("type")
            row["type"] = kind
            if kind == "delta":
                row["path"] = list(msg.metadata.delta_path)
                row["delta"] = msg.delta.WhichOneof("type")
                if msg.delta.fragment_id:
                    row["fragment"] = msg.delta.fragment_id[:8]
                if msg.delta.WhichOneof("type") == "new_element":
                    el = msg.delta.new_element
                    row["element"] = el.WhichOneof("type")
                    if el.WhichOneof("type") == "markdown":
                        row["text"] = el.markdown.body[:60]
            elif kind in ("new_session", "script_finished"):
                row["run"] = msg.metadata.run.script_run_id[:8]
                row["fragments"] = [f[:8] for f in msg.metadata.run.fragment_ids]
                if kind == "new_session":
                    row["session"] = msg.new_session.initialize.session_id[:8]
                else:
                    row["status"] = ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)
            elif kind == "session_status_changed":
                row["running"] = msg.session_status_changed.script_is_running
            elif kind == "auto_rerun":
                row["fragment"] = msg.auto_rerun.fragment_id[:8]
        else:
            msg = BackMsg.FromString(data)
            kind = msg.WhichOneof("type")
            row["type"] = kind
            if kind == "rerun_script":
                row["fragment"] = msg.rerun_script.fragment_id[:8] or None
                row["auto"] = msg.rerun_script.is_auto_rerun
    except Exception as err:  # noqa: BLE001 — a frame we cannot read is still a frame
        row["undecoded"] = repr(err)[:120]
    return row


class FrameLog:
    """A page's websocket frames and console, kept raw until someone asks."""

    def __init__(self, clock) -> None:  # noqa: ANN001
        self.clock = clock
        self.frames: deque[tuple[float, str, bytes | str]] = deque(maxlen=KEEP_FRAMES)
        self.sockets = 0

    async def attach(self, page) -> None:  # noqa: ANN001
        await page.add_init_script(JS_WS_LOG)

        def on_socket(ws) -> None:  # noqa: ANN001
            self.sockets += 1
            self.frames.append((self.clock(), "open", b""))
            ws.on("framereceived", lambda payload: self.frames.append((self.clock(), "recv", payload)))
            ws.on("framesent", lambda payload: self.frames.append((self.clock(), "sent", payload)))
            ws.on("close", lambda _: self.frames.append((self.clock(), "close", b"")))

        page.on("websocket", on_socket)

    def decoded(self) -> list[dict[str, Any]]:
        return [{"t": round(t, 4), "dir": d} if d in ("open", "close") else decode(t, d, p) for t, d, p in self.frames]


def session_ids(frames: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(f["session"] for f in frames if f.get("session")))


def server_trace(path: Path, sessions: list[str]) -> list[dict[str, Any]]:
    """The server's trace lines for these sessions (harness/stalltrace/sitecustomize.py)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("sid") in sessions:
            rows.append(row)
    return rows


JS_WS_ALL = "() => ({handled: window.__edgechatWsCount ?? 0, log: window.__edgechatWs ?? []})"


def browser_lag(frames: FrameLog, js: dict, wall_minus_monotonic: float) -> float | None:
    """Longest time a websocket message waited between reaching the browser (network) and reaching
    the page's JavaScript, over the current document's messages (the latest websocket's frames)."""
    if len(frames.frames) == KEEP_FRAMES:  # the oldest frames are gone: indexes would not match
        return None
    received = [t for t, d, _ in frames.frames if d == "recv"]
    opened = [i for i, (_, d, _) in enumerate(frames.frames) if d == "open"]
    if opened:  # only the current document's socket: a reload starts a new JS log
        received = [t for t, d, _ in list(frames.frames)[opened[-1] :] if d == "recv"]
    log, handled = js["log"], js["handled"]
    first = handled - len(log)  # index of log[0] among this document's messages
    lags = [
        ms / 1000 - wall_minus_monotonic - received[first + k]
        for k, (ms, _) in enumerate(log)
        if 0 <= first + k < len(received)
    ]
    return round(max(lags), 2) if lags else None
