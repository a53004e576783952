"""The chat page: `streamlit run web_demo.py [-- FLAGS]` (same flags as baichuan2.py).

Reads top to bottom as what the user sees. The model is loaded once per process
(`st.cache_resource`) and shared by every browser session; each session keeps its own client,
history and settings (language, system prompt, sampling) in `st.session_state`. Strings live in
edgechat/ui_text.py, export formats in edgechat/export.py, the password and limits in
edgechat/access.py: this file only lays them out.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import streamlit as st

from baichuan2 import Baichuan2, client_for
from edgechat import export
from edgechat.access import PASSWORD_ATTEMPTS_PER_MINUTE, RateLimiter, password_ok
from edgechat.config import LANGS, Settings, parse_settings
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, load_runtime
from edgechat.safe_markdown import safe_markdown
from edgechat.types import Message, Queued, SamplingParams, TokenEvent, TurnStats
from edgechat.ui_text import LANG_NAMES, stats_line, t

STOPPED_MARK = " ⏹"
CURSOR = " ▌"
STREAM_INTERVAL_S = 0.05  # ~20 page updates a second while an answer streams
SERVER_PANEL_REFRESH_S = 0.5  # the room sees load move; a tiny fragment run, never the chat
# EXPERIMENT (branch `stall` only, never to merge): knobs for the stall investigation (issue 13).
if os.environ.get("EDGECHAT_EXP_STREAM_S"):  # "inf": no page update until the answer is complete
    STREAM_INTERVAL_S = float(os.environ["EDGECHAT_EXP_STREAM_S"])
if os.environ.get("EDGECHAT_EXP_PANEL_S"):  # "0": the server panel is drawn once per full run
    SERVER_PANEL_REFRESH_S = float(os.environ["EDGECHAT_EXP_PANEL_S"]) or None
# Sidebar sampling widgets: session_state key -> (min, max); values from the flags are clamped in.
SAMPLING_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "top_k": (0, 200),
    "repetition_penalty": (0.8, 2.0),
    "max_new_tokens": (1, 8192),
}


# ---- loading: settings every run (cheap), the runtime once per process ----


@st.cache_resource(show_spinner=False)
def get_runtime(argv: tuple[str, ...]) -> Runtime:
    """ONE model per process, whatever the number of sessions."""
    return load_runtime(parse_settings(argv, prog="web_demo.py"))


def load_settings() -> Settings:
    try:
        return parse_settings(sys.argv[1:], prog="web_demo.py")
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


_RELOAD = threading.Lock()


def load_runtime_once(lang: str) -> Runtime:
    """The shared runtime; if its scheduler thread died, the first session to notice builds a
    new one (the server keeps running, every session moves to the new runtime)."""
    argv = tuple(sys.argv[1:])
    try:
        with st.spinner(t(lang, "loading")), _RELOAD:
            runtime = get_runtime(argv)
            if getattr(runtime.engine, "failure", None) is not None:
                get_runtime.clear()
                runtime.close()
                runtime = get_runtime(argv)
            return runtime
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


def init_session(settings: Settings) -> None:
    """This browser session's state, seeded from the flags; nothing here is shared."""
    ss = st.session_state
    if "messages" in ss:
        return
    ss.messages = []  # [{"role", "content", "stopped"?, "stats"?, "trimmed"?, "error"?}]
    ss.partial = None  # answer text while streaming; kept if the run is interrupted (Stop)
    ss.pending = False  # the last user message awaits its answer: input disabled, answer() runs
    ss.editing = False
    ss.flash = []  # [(kind, text)] shown once, after a rerun
    ss.authed = not settings.password
    ss.requests = RateLimiter(settings.rate_limit)
    ss.logins = RateLimiter(PASSWORD_ATTEMPTS_PER_MINUTE)
    ss.lang = settings.lang
    ss.system = settings.system or ""
    for key, (low, high) in SAMPLING_RANGES.items():
        value = getattr(settings.sampling, key)
        ss[key] = type(value)(min(max(value, low), high))


def session_client(runtime: Runtime, settings: Settings) -> Baichuan2:
    ss = st.session_state
    if "client" not in ss or ss.engine is not runtime.engine:  # first run, or a rebuilt runtime
        ss.handle, ss.engine, ss.tokenizer = runtime.handle, runtime.engine, runtime.tokenizer
        ss.client = client_for(runtime, settings)
    return ss.client


def sampling_from_session(settings: Settings) -> SamplingParams:
    ss = st.session_state
    return SamplingParams(
        temperature=float(ss.temperature),
        top_p=float(ss.top_p),
        top_k=int(ss.top_k),
        repetition_penalty=float(ss.repetition_penalty),
        max_new_tokens=int(ss.max_new_tokens),
        seed=settings.sampling.seed,
    )


# ---- history ----


def answer_record(text: str, stats: TurnStats | None, stopped: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {"role": "assistant", "content": text}
    if stopped:
        record["stopped"] = True
    if stats is not None and stats.completion_tokens:
        record["stats"] = stats.figures()
    if stats is not None and stats.trimmed_messages:
        record["trimmed"] = stats.trimmed_messages
    if stats is not None and stats.error:
        record["error"] = stats.error
    return record


def keep_interrupted_answer() -> None:
    """A rerun that arrives while an answer streams (Stop, New chat) interrupts it: keep the
    partial answer in the history, marked as stopped; the stream was closed, freeing the engine."""
    ss = st.session_state
    if ss.partial is not None:
        stats = ss.client.last_stats if ss.partial else None  # no text: the stream may not have begun
        ss.messages.append(answer_record(ss.partial, stats, stopped=True))
        ss.partial = None
        ss.pending = False


def history_for_model(messages: list[dict[str, Any]]) -> list[Message]:
    """What the model sees: an answer stopped before its first word is left out with its question."""
    out: list[Message] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("stopped") and not m["content"]:
            if out and out[-1]["role"] == "user":
                out.pop()
            continue
        out.append(Message(role=m["role"], content=m["content"]))
    return out


# ---- actions (widget callbacks: they run before the script, so the page redraws once) ----


def refused(text: str, settings: Settings, lang: str) -> tuple[str, str] | None:
    """Why this message cannot be sent now, as (kind, text) for the page; None if it can."""
    if not text.strip():
        return "info", t(lang, "blank")
    if len(text) > settings.max_input_chars:
        return "warning", t(lang, "too_long", n=len(text), limit=settings.max_input_chars)
    wait = st.session_state.requests.hit()
    if wait:
        return "warning", t(lang, "rate_limited", limit=settings.rate_limit, wait=wait)
    return None


def ask(text: str, settings: Settings, lang: str) -> None:
    ss = st.session_state
    problem = refused(text, settings, lang)
    if problem:
        ss.flash.append(problem)
        return
    ss.messages.append({"role": "user", "content": text})
    ss.pending, ss.editing = True, False


def submit(settings: Settings, lang: str) -> None:
    ask(st.session_state.prompt or "", settings, lang)


def regenerate(settings: Settings, lang: str) -> None:
    ss = st.session_state
    wait = ss.requests.hit()
    if wait:
        ss.flash.append(("warning", t(lang, "rate_limited", limit=settings.rate_limit, wait=wait)))
        return
    if ss.messages and ss.messages[-1]["role"] == "assistant":
        ss.messages.pop()
    ss.pending, ss.editing = True, False


def resend(settings: Settings, lang: str) -> None:
    """Replace the last question (and its answer) with the edited text, and answer that."""
    ss = st.session_state
    text = ss.edit_text or ""
    problem = refused(text, settings, lang)
    if problem:
        ss.flash.append(problem)
        return
    last_user = max(i for i, m in enumerate(ss.messages) if m["role"] == "user")
    del ss.messages[last_user:]
    ss.messages.append({"role": "user", "content": text})
    ss.pending, ss.editing = True, False


def start_edit() -> None:
    st.session_state.editing = True


def cancel_edit() -> None:
    st.session_state.editing = False


def new_chat(client: Baichuan2) -> None:
    ss = st.session_state
    ss.messages, ss.partial, ss.pending, ss.editing, ss.flash = [], None, False, False, []
    client.engine.forget_session(client.session)


# ---- the page ----


def password_gate(settings: Settings, lang: str) -> bool:
    """True once this session gave the password; until then nothing else of the page is drawn."""
    ss = st.session_state
    if ss.authed:
        return True
    st.title("edgechat")
    st.subheader(t(lang, "password_title"))
    with st.form("login"):
        st.text_input(t(lang, "password"), type="password", key="password_input")
        submitted = st.form_submit_button(t(lang, "password_enter"), type="primary")
    if submitted:
        wait = ss.logins.hit()
        if wait:
            st.error(t(lang, "password_locked", wait=wait))
        elif password_ok(ss.password_input or "", settings.password or ""):
            ss.authed = True
            st.rerun()
        else:
            st.error(t(lang, "password_wrong"))
    return False


def lan_url() -> str | None:
    """The address people in the room type (Streamlit's "Network URL"); None when bound to loopback."""
    address = st.get_option("server.address") or ""
    port = st.get_option("server.port")
    if address in ("127.0.0.1", "localhost", "::1"):
        return None
    if address not in ("", "0.0.0.0", "::"):
        return f"http://{address}:{port}"
    from streamlit import net_util

    ip = net_util.get_internal_ip()
    return f"http://{ip}:{port}" if ip else None


@st.fragment(run_every=SERVER_PANEL_REFRESH_S)
def server_panel(runtime: Runtime, lang: str) -> None:
    """Refreshed twice a second on its own, without touching the chat (a fragment never preempts
    an answer that streams in the same session)."""
    info = runtime.info
    st.caption(f"**{info.get('model_name', '?')}** · {info.get('backend', '?')}")
    if info.get("model"):
        st.caption(t(lang, "server_model", file=Path(str(info["model"])).name))
    st.caption(t(lang, "server_device", device=info.get("device", "?"), context=info.get("context_length", "?")))
    if getattr(runtime.engine, "chat_level", False):  # a remote server
        st.caption(runtime.engine.health())  # a cached /v1/models round trip
    stats = runtime.engine.stats()
    running = stats["running"] + stats["prefilling"]
    st.caption(t(lang, "server_load", running=running, waiting=stats["waiting"], tps=stats["aggregate_tps"]))
    url = lan_url()
    if url:
        st.caption(t(lang, "server_lan", url=url))


def answer_settings(runtime: Runtime, lang: str, busy: bool) -> None:
    context = int(runtime.info.get("context_length") or SAMPLING_RANGES["max_new_tokens"][1])
    with st.expander(t(lang, "settings"), icon=":material/tune:"):
        st.text_area(t(lang, "system"), key="system", help=t(lang, "system_help"), disabled=busy, height=80)
        st.slider(t(lang, "temperature"), 0.0, 2.0, step=0.05, key="temperature", disabled=busy)
        st.caption(t(lang, "temperature_help"))
        st.slider(t(lang, "top_p"), 0.05, 1.0, step=0.05, key="top_p", disabled=busy)
        st.number_input(t(lang, "top_k"), 0, 200, step=1, key="top_k", disabled=busy)
        st.slider(t(lang, "repetition_penalty"), 0.8, 2.0, step=0.05, key="repetition_penalty", disabled=busy)
        most = max(context, int(st.session_state.max_new_tokens))  # a flag beyond the context stays visible
        st.number_input(t(lang, "max_new_tokens"), 1, most, step=16, key="max_new_tokens", disabled=busy)
        st.caption(t(lang, "settings_note"))


def export_buttons(runtime: Runtime, settings: Settings, lang: str) -> None:
    ss = st.session_state
    model = str(runtime.info.get("model_name", "model"))
    system = ss.system.strip() or None
    roles = {"user": t(lang, "role_user"), "assistant": t(lang, "role_assistant")}
    markdown = export.to_markdown(
        ss.messages,
        title=t(lang, "export_title", model=model),
        role_names=roles,
        caption=lambda s: stats_line(s, lang),
        system=system,
    )
    data = export.to_json(ss.messages, model=model, system=system, sampling=asdict(sampling_from_session(settings)))
    row = st.container(horizontal=True)
    for label, content, ext, mime in (
        ("Markdown", markdown, "md", "text/markdown"),
        ("JSON", data, "json", "application/json"),
    ):
        row.download_button(
            label,
            content,
            file_name=export.filename(model, ext),
            mime=mime,
            key=f"export_{ext}",
            on_click="ignore",  # a download must never interrupt an answer that streams
            disabled=not ss.messages,
            icon=":material/download:",
        )


def sidebar(runtime: Runtime, client: Baichuan2, settings: Settings, lang: str, busy: bool) -> None:
    with st.sidebar:
        st.button(
            t(lang, "new_chat"),
            key="new_chat",
            on_click=new_chat,
            args=(client,),
            icon=":material/add:",
            width="stretch",
        )
        answer_settings(runtime, lang, busy)
        st.subheader(t(lang, "server"))
        server_panel(runtime, lang)
        st.subheader(t(lang, "export"))
        export_buttons(runtime, settings, lang)


def show_history(runtime: Runtime, settings: Settings, lang: str, busy: bool) -> None:
    messages = st.session_state.messages
    for i, m in enumerate(messages):
        with st.chat_message(m["role"]):
            content = m["content"] + (STOPPED_MARK if m.get("stopped") else "")
            st.markdown(safe_markdown(content))
            if m.get("error"):
                st.error(m["error"])
            if m.get("trimmed"):
                context = runtime.info.get("context_length", "?")
                st.info(t(lang, "trimmed", n=m["trimmed"], context=context), icon="✂️")
            if m.get("stats"):
                st.caption(stats_line(m["stats"], lang))
            if i == len(messages) - 1 and m["role"] == "assistant" and not busy:
                last_turn_actions(settings, lang)


def last_turn_actions(settings: Settings, lang: str) -> None:
    ss = st.session_state
    if ss.editing:
        question = next(m["content"] for m in reversed(ss.messages) if m["role"] == "user")
        with st.form("edit"):
            st.text_area(t(lang, "edit_label"), value=question, key="edit_text")
            row = st.container(horizontal=True)
            with row:
                st.form_submit_button(t(lang, "resend"), on_click=resend, args=(settings, lang), type="primary")
                st.form_submit_button(t(lang, "cancel"), on_click=cancel_edit)
        return
    row = st.container(horizontal=True)
    with row:
        st.button(
            t(lang, "regenerate"),
            key="regenerate",
            on_click=regenerate,
            args=(settings, lang),
            icon=":material/refresh:",
            type="tertiary",
        )
        st.button(t(lang, "edit"), key="edit", on_click=start_edit, icon=":material/edit:", type="tertiary")


def answer(client: Baichuan2, settings: Settings, lang: str) -> None:
    """Stream the answer to the last question; Stop (or any rerun) closes the stream, which
    cancels the request, and the next run keeps the partial text."""
    ss = st.session_state
    question = ss.messages[-1]["content"]
    history = history_for_model(ss.messages[:-1])
    client.system = ss.system.strip() or None  # per session: this client only
    sampling = sampling_from_session(settings)
    with st.chat_message("assistant"):
        status = st.empty()
        body = st.empty()
        ss.partial = ""
        st.button(t(lang, "stop"), key="stop", help=t(lang, "stop_help"), icon=":material/stop_circle:")

        waiting = {"text": ""}

        def on_event(event: TokenEvent) -> None:
            """Queue position while waiting; every event (ticks too) is a Streamlit call, the
            point where a Stop click can interrupt a request that has not started yet."""
            if isinstance(event, Queued):
                waiting["text"] = t(lang, "queued", position=event.position, eta=event.eta_s)
            if waiting["text"] and not ss.partial:
                status.caption(waiting["text"])

        client.on_event = on_event
        stream = client.chat_stream(question, history, sampling=sampling)
        flushed = 0.0
        try:
            for piece in stream:
                if not ss.partial:
                    status.empty()
                ss.partial += piece
                # Coalesced: each update is a websocket message and a Markdown re-render in the
                # browser, CPU the model would rather have.
                if time.monotonic() - flushed >= STREAM_INTERVAL_S:
                    body.markdown(safe_markdown(ss.partial) + CURSOR)
                    flushed = time.monotonic()
        finally:
            stream.close()  # frees the sequence now if we are interrupted
            client.on_event = None
    text, ss.partial, ss.pending = ss.partial, None, False
    stats = client.last_stats
    if stats.notice and not stats.completion_tokens:
        ss.messages.pop()  # not answered (too long for the context, server busy): say why
        ss.flash.append(("warning", stats.notice))
    else:
        ss.messages.append(answer_record(text, stats))
    st.rerun()  # redraw without the Stop button, with the input enabled


def main() -> None:
    st.set_page_config(page_title="edgechat", page_icon="💬")
    settings = load_settings()
    init_session(settings)
    keep_interrupted_answer()
    ss = st.session_state
    busy = bool(ss.pending)
    with st.sidebar:
        st.radio(t(ss.lang, "language"), LANGS, format_func=LANG_NAMES.get, key="lang", horizontal=True, disabled=busy)
    lang = ss.lang
    if not password_gate(settings, lang):
        return
    runtime = load_runtime_once(lang)
    client = session_client(runtime, settings)
    st.title(runtime.info.get("model_name", "edgechat"))
    st.caption(t(lang, "tagline", backend=runtime.info.get("backend", "?")))
    sidebar(runtime, client, settings, lang, busy)
    show_history(runtime, settings, lang, busy)
    for kind, text in ss.flash:
        getattr(st, kind)(text)
    ss.flash = []
    st.chat_input(t(lang, "ask"), key="prompt", disabled=busy, on_submit=submit, args=(settings, lang))
    if busy:
        answer(client, settings, lang)


main()
