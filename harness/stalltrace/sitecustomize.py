"""Server-side script-run trace for bench/load.py's stress mode (EDGECHAT_TRACE=PATH).

Python imports `sitecustomize` at start-up from PYTHONPATH: bench/load.py puts this folder there for
the `streamlit run` it starts, and only when it traces. Nothing here runs otherwise. Each line of
PATH is one JSON event with `time.monotonic()` (the driver uses the same clock), the session id and
what Streamlit did: back messages received, how a rerun request was handled (folded into the running
ScriptRunner, or a new ScriptRunner because of `runner.fastReruns`), script runs (start, end, the
exception that ended them, the page's own state), events of a stale ScriptRunner that AppSession
dropped, each ForwardMsg as it leaves for the websocket, and websocket connects/disconnects.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

PATH = os.environ.get("EDGECHAT_TRACE")


def _install(path: str) -> None:  # noqa: C901, PLR0915 — one place that wraps each hook
    from streamlit.runtime import app_session, runtime
    from streamlit.runtime.scriptrunner import script_runner

    out = open(path, "a", buffering=1)  # noqa: SIM115 — open for the life of the server
    lock = threading.Lock()

    def log(sid: str, ev: str, **fields: object) -> None:
        line = json.dumps({"t": round(time.monotonic(), 4), "sid": sid[:8], "ev": ev, **fields}, default=str)
        with lock:
            out.write(line + "\n")

    def runner_id(runner: object) -> str | None:
        return None if runner is None else f"{id(runner) & 0xFFFFFF:06x}"

    def page_state(session_state: object) -> dict:
        """The page's own keys (web_demo.py), read without Streamlit's yield hook."""
        state = getattr(session_state, "_state", session_state)
        got: dict = {}
        try:
            for key in ("messages", "pending", "partial"):
                if key in state:
                    value = state[key]
                    got[key] = len(value) if isinstance(value, (list, str)) else value
        except Exception as err:  # noqa: BLE001 — a trace never breaks the server
            got["error"] = repr(err)
        return got

    AppSession = app_session.AppSession

    orig_backmsg = AppSession.handle_backmsg

    def handle_backmsg(self, msg):  # noqa: ANN001, ANN202
        kind = msg.WhichOneof("type")
        fields: dict = {"type": kind}
        if kind == "rerun_script":
            rs = msg.rerun_script
            fields["fragment"] = rs.fragment_id[:8] or None
            fields["auto"] = rs.is_auto_rerun
            triggers = []
            for w in rs.widget_states.widgets:
                which = w.WhichOneof("value")
                if which in ("trigger_value", "string_trigger_value", "chat_input_value", "json_trigger_value"):
                    value = getattr(w, which)
                    if (
                        value
                        if isinstance(value, bool)
                        else value.ListFields()
                        if hasattr(value, "ListFields")
                        else value
                    ):
                        triggers.append(w.id.rsplit("-", 1)[-1][:24])
            fields["triggers"] = triggers
            fields["runner"] = runner_id(self._scriptrunner)
        log(self.id, "backmsg", **fields)
        return orig_backmsg(self, msg)

    AppSession.handle_backmsg = handle_backmsg

    orig_request_rerun = AppSession.request_rerun

    def request_rerun(self, client_state):  # noqa: ANN001, ANN202
        before = self._scriptrunner
        orig_request_rerun(self, client_state)
        after = self._scriptrunner
        how = "new-runner" if after is not before else "folded"
        if before is not None and after is not before:
            how = "stopped-old+new-runner"
        log(self.id, "rerun_request", how=how, old=runner_id(before), new=runner_id(after))

    AppSession.request_rerun = request_rerun

    orig_on_event = AppSession._on_scriptrunner_event

    def on_scriptrunner_event(self, sender, event, forward_msg=None, **kwargs):  # noqa: ANN001, ANN202
        name = event.name
        if name != "ENQUEUE_FORWARD_MSG":
            rd = kwargs.get("run_descriptor")
            fields: dict = {"runner": runner_id(sender), "current": sender is self._scriptrunner}
            if rd is not None:
                fields["run"] = rd.script_run_id[:8]
                fields["fragments"] = [f[:8] for f in rd.fragment_ids]
            if sender is not None:
                fields["state"] = page_state(sender._session_state)
            log(self.id, "runner_event", event=name, **fields)
        return orig_on_event(self, sender, event, forward_msg=forward_msg, **kwargs)

    AppSession._on_scriptrunner_event = on_scriptrunner_event

    orig_handle = AppSession._handle_scriptrunner_event_on_event_loop

    def handle_on_loop(self, sender, event, *args, **kwargs):  # noqa: ANN001, ANN202
        if sender is not self._scriptrunner:
            fields = {"event": event.name, "runner": runner_id(sender), "current": runner_id(self._scriptrunner)}
            msg = kwargs.get("forward_msg") if "forward_msg" in kwargs else (args[0] if args else None)
            if msg is not None:
                fields["type"] = msg.WhichOneof("type")
                if fields["type"] == "delta":
                    fields["path"] = list(msg.metadata.delta_path)
            log(self.id, "dropped_stale_event", **fields)
        return orig_handle(self, sender, event, *args, **kwargs)

    AppSession._handle_scriptrunner_event_on_event_loop = handle_on_loop

    orig_exec = script_runner.exec_func_with_error_handling

    def exec_with_trace(func, ctx):  # noqa: ANN001, ANN202
        result = orig_exec(func, ctx)
        _, ok, rerun, premature, uncaught = result
        log(
            ctx.session_id,
            "exec_done",
            ok=ok,
            rerun=None if rerun is None else {"fragments": [f[:8] for f in rerun.fragment_id_queue]},
            premature_stop=premature,
            uncaught=None if uncaught is None else repr(uncaught)[:300],
            thread=threading.current_thread().ident,
            state=page_state(ctx.session_state),
        )
        return result

    script_runner.exec_func_with_error_handling = exec_with_trace

    orig_send = runtime.Runtime._send_message

    def send_message(self, session_info, msg):  # noqa: ANN001, ANN202
        kind = msg.WhichOneof("type")
        fields: dict = {"type": kind, "bytes": msg.ByteSize()}
        if kind == "delta":
            fields["path"] = list(msg.metadata.delta_path)
            fields["delta"] = msg.delta.WhichOneof("type")
            if msg.delta.fragment_id:
                fields["fragment"] = msg.delta.fragment_id[:8]
        elif kind in ("new_session", "script_finished"):
            fields["run"] = msg.metadata.run.script_run_id[:8]
            fields["fragments"] = [f[:8] for f in msg.metadata.run.fragment_ids]
            if kind == "script_finished":
                fields["status"] = msg.script_finished
        elif kind == "session_status_changed":
            fields["running"] = msg.session_status_changed.script_is_running
        log(session_info.session.id, "send", **fields)
        return orig_send(self, session_info, msg)

    runtime.Runtime._send_message = send_message

    orig_connect = runtime.Runtime.connect_session

    def connect_session(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        sid = orig_connect(self, *args, **kwargs)
        log(sid, "ws_connect", resumed=kwargs.get("existing_session_id") is not None)
        return sid

    runtime.Runtime.connect_session = connect_session

    orig_disconnect = runtime.Runtime.disconnect_session

    def disconnect_session(self, session_id, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        log(session_id, "ws_disconnect")
        return orig_disconnect(self, session_id, *args, **kwargs)

    runtime.Runtime.disconnect_session = disconnect_session

    gc_time = {"start": 0.0, "total": 0.0, "full": 0}

    def on_gc(phase: str, info: dict) -> None:
        """Time spent in gen-2 collections (Streamlit runs `gc.collect(2)` after each script run)."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_time["start"] = time.perf_counter()
        else:
            gc_time["total"] += time.perf_counter() - gc_time["start"]
            gc_time["full"] += 1

    gc.callbacks.append(on_gc)

    def heartbeat() -> None:
        """Twice a second: how late the event loop runs a callback posted now (its lag behind the
        script threads), and each session's unsent messages and ScriptRunner."""
        while True:
            time.sleep(0.5)
            rt = runtime.Runtime._instance
            objs = getattr(rt, "_async_objs", None) if rt else None
            if objs is None:
                continue
            posted = time.monotonic()

            def on_loop(posted: float = posted, rt: runtime.Runtime = rt) -> None:
                queues = {
                    info.session.id[:8]: [len(info.session._browser_queue), runner_id(info.session._scriptrunner)]
                    for info in rt._session_mgr.list_active_sessions()
                }
                log(
                    "-",
                    "loop_lag",
                    lag=round(time.monotonic() - posted, 4),
                    queues=queues,
                    gc2_s=round(gc_time["total"], 3),
                    gc2_n=gc_time["full"],
                    cpu_s=round(time.process_time(), 2),
                )

            try:
                objs.eventloop.call_soon_threadsafe(on_loop)
            except RuntimeError:
                return

    threading.Thread(target=heartbeat, name="edgechat-trace-heartbeat", daemon=True).start()
    log("-", "trace_installed", pid=os.getpid(), argv=sys.orig_argv[:4])


if PATH and "streamlit" in sys.orig_argv[1:4]:  # `python -m streamlit run ...` only
    _install(PATH)
