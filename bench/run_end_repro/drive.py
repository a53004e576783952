"""Click app.py's button M times over Streamlit's websocket, as its frontend would, with the
fragment's auto-reruns sent on their interval: how many of the button's runs never told the browser
they ended. `python3 bench/run_end_repro/drive.py --clicks 20 [--late 0]`.

The event loop being behind is played by harness/lateloop/sitecustomize.py (`--late S`, 0 = off): a
fragment rerun that arrives during a script run is handled once that run's thread has ended (the
worst case of a loaded box, every time; Streamlit's code unchanged). A run's end is lost when a
fragment run's new_session arrives while the browser has not had the previous full run's
script_finished: Streamlit dropped it, and the run's last deltas (here "done N"). Needs only
streamlit and websockets (and the 20-line sitecustomize): standalone on purpose, free_port
included, so that it can go to Streamlit's issue tracker as it is."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rerun(widgets: list[WidgetState] = (), fragment_id: str = "") -> bytes:
    msg = BackMsg()
    msg.rerun_script.fragment_id = fragment_id
    msg.rerun_script.is_auto_rerun = bool(fragment_id)
    msg.rerun_script.widget_states.widgets.extend(widgets)
    return msg.SerializeToString()


async def drive(url: str, clicks: int, wait_s: float) -> dict:
    import websockets

    jar = urllib.request.urlopen(url + "/_stcore/health", timeout=10).headers.get_all("Set-Cookie") or []
    cookie = "; ".join(c.split(";")[0] for c in jar)
    xsrf = next(c.split(";")[0].split("=", 1)[1] for c in jar if c.startswith("_streamlit_xsrf="))
    state = {"open": False, "lost": 0, "done": "", "button": "", "finished": 0}
    tickers: dict[str, asyncio.Task] = {}
    async with websockets.connect(url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit", xsrf],
                                  additional_headers={"Cookie": cookie}) as ws:  # fmt: skip

        async def tick(fragment_id: str, every: float) -> None:
            while True:
                await asyncio.sleep(every)
                await ws.send(rerun(fragment_id=fragment_id))

        async def read() -> None:
            async for data in ws:
                msg = ForwardMsg.FromString(data)
                kind = msg.WhichOneof("type")
                if kind == "new_session":
                    if msg.metadata.run.fragment_ids and state["open"]:
                        state["lost"] += 1  # a fragment run began; the full run before it never ended
                    state["open"] = not msg.metadata.run.fragment_ids
                elif kind == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
                    state["open"] = False
                    state["finished"] += msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY
                elif kind == "auto_rerun" and msg.auto_rerun.fragment_id not in tickers:
                    tickers[msg.auto_rerun.fragment_id] = asyncio.create_task(
                        tick(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
                    )
                elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                    el = msg.delta.new_element
                    if el.WhichOneof("type") == "button":
                        state["button"] = el.button.id
                    elif el.WhichOneof("type") == "text" and el.text.body.startswith("done "):
                        state["done"] = el.text.body

        reader = asyncio.create_task(read())
        await ws.send(rerun())
        never_done = []
        for n in range(1, clicks + 1):
            while not state["button"] or state["open"]:
                await asyncio.sleep(0.05)
            press = WidgetState(id=state["button"], trigger_value=True)
            await ws.send(rerun([press]))
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and not (state["done"] == f"done {n}" and not state["open"]):
                await asyncio.sleep(0.05)
            if state["done"] != f"done {n}" or state["open"]:
                never_done.append(n)  # the browser would show "done {n-1}" until the person acts
                state["open"] = False
                await ws.send(rerun())  # the person clicks somewhere: a full run redraws the page
                await asyncio.sleep(wait_s)
        reader.cancel()
        for task in tickers.values():
            task.cancel()
    return {"clicks": clicks, "run_ends_lost": state["lost"], "clicks_never_shown_done": len(never_done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--wait", type=float, default=3.0, help="seconds a click's run may take to show its end")
    parser.add_argument("--late", type=float, default=1.0, help="hold a fragment rerun until the run ends (s)")
    args = parser.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(HERE / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true"]  # fmt: skip
    cmd += ["--browser.gatherUsageStats", "false"]
    hook = str(HERE.parents[1] / "harness" / "lateloop")
    env = {**os.environ, "PYTHONPATH": hook, "EDGECHAT_LATE_FRAGMENT_S": str(args.late)}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        result = asyncio.run(drive(url, args.clicks, args.wait))
    finally:
        server.terminate()
        server.wait()
    import streamlit

    result.update(streamlit=streamlit.__version__, late_s=args.late, run_every=os.environ.get("REPRO_RUN_EVERY", "0.3"),
                  load1=os.getloadavg()[0])  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
