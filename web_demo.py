"""The chat page: `streamlit run web_demo.py [-- FLAGS]` (same flags as baichuan2.py).

Reads top to bottom as what the user sees. The model is loaded once per process
(edgechat.runtime.shared_runtime) and shared by every browser session; each session keeps its own
Conversation (records, system prompt, sampling) in `st.session_state`. An answer is produced by
the conversation's own thread; this page only renders it, so a rerun never loses an answer.
Strings live in edgechat/ui_text.py, export formats in edgechat/export.py, limits in
edgechat/access.py: this file lays them out.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import streamlit as st
from streamlit import runtime as streamlit_runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from baichuan2 import conversation_for
from edgechat import export
from edgechat.access import PASSWORD_ATTEMPTS_PER_MINUTE, RateLimiter, password_ok
from edgechat.config import LANGS, Settings, options, parse_settings
from edgechat.conversation import Conversation, Refusal
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, shared_runtime
from edgechat.safe_markdown import safe_markdown
from edgechat.ui_text import LANG_NAMES, stats_line, t

STOPPED_MARK = " ⏹"
CURSOR = " ▌"
FRAME_S = 0.05  # the streaming answer is redrawn at most ~20 times a second
KEEPALIVE_S = 0.25  # ... and at least this often, the points where Stop or a closed tab can act
SERVER_PANEL_REFRESH_S = 0.5  # the room sees load move; a tiny fragment run, never the chat
GONE_CHECK_S = 0.2  # after a run is stopped, when to ask Streamlit whether the page is still there
UNFOLLOWED_S = 5.0  # an answer no page run has rendered for this long is interrupted (a backstop)
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def load_settings() -> Settings:
    try:
        return parse_settings(sys.argv[1:], prog="web_demo.py")
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


def load_runtime(settings: Settings, lang: str) -> Runtime:
    try:
        with st.spinner(t(lang, "loading")):
            return shared_runtime(settings)
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


def init_session(settings: Settings) -> None:
    """This browser session's state, seeded from the flags; nothing here is shared."""
    ss = st.session_state
    if "authed" in ss:
        return
    ss.settings = settings  # the widget callbacks need them before the script runs
    ss.flash = []  # [(kind, text)] shown once, after a rerun
    ss.editing = False
    ss.authed = not settings.password
    ss.requests = RateLimiter(settings.rate_limit)
    ss.logins = RateLimiter(PASSWORD_ATTEMPTS_PER_MINUTE)
    ss.lang = settings.lang
    ss.system = settings.system or ""
    for key in SAMPLING_KEYS:
        ss[key] = getattr(settings, key)


def session_conversation(runtime: Runtime, settings: Settings) -> Conversation:
    """This session's conversation; after a runtime rebuild its records move to a new client."""
    ss = st.session_state
    conv: Conversation | None = ss.get("conversation")
    if conv is None or conv.client.engine is not runtime.backend:
        fresh = conversation_for(runtime, settings)
        fresh.watch_s = UNFOLLOWED_S
        if conv is not None:
            fresh.records = conv.records
        ss.conversation = conv = fresh
        ss.handle, ss.engine, ss.tokenizer = runtime.handle, runtime.backend, runtime.tokenizer  # the seed's trio
    conv.system = ss.system.strip()
    conv.sampling = replace(conv.sampling, **{k: type(getattr(conv.sampling, k))(ss[k]) for k in SAMPLING_KEYS})
    return conv


# ---- actions (widget callbacks: they run before the script, so the page redraws once) ----


def act(action: str, text: str | None = None) -> None:
    """ask / regenerate / edit / continue on this session's conversation, within the limits."""
    ss, lang = st.session_state, st.session_state.lang
    wait = ss.requests.hit()
    if wait:
        ss.flash.append(("warning", t(lang, "rate_limited", limit=ss.requests.limit, wait=wait)))
        return
    conv = session_conversation(shared_runtime(ss.settings), ss.settings)  # rebuilt if the engine died
    run = {"ask": conv.ask, "edit": conv.edit}
    refusal: Refusal | None = run[action](text or "") if action in run else getattr(conv, action)()
    if refusal is not None:
        kind = "info" if refusal.key == "blank" else "warning"
        ss.flash.append((kind, t(lang, refusal.key, **refusal.fields)))
    ss.editing = False


def stop() -> None:
    st.session_state.conversation.stop()


def new_chat() -> None:
    st.session_state.conversation.clear()
    st.session_state.editing = False


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
    """Refreshed twice a second on its own, without touching the chat."""
    info = runtime.info
    st.caption(f"**{info.get('model_name', '?')}** · {info.get('backend', '?')}")
    if info.get("model"):
        st.caption(t(lang, "server_model", file=Path(str(info["model"])).name))
    st.caption(t(lang, "server_device", device=info.get("device", "?"), context=info.get("context_length", "?")))
    health = runtime.backend.health()  # a remote server's cached /v1/models round trip
    if health is not None:
        st.caption(health)
    stats = runtime.backend.stats()
    running = stats["running"] + stats["prefilling"]
    st.caption(t(lang, "server_load", running=running, waiting=stats["waiting"], tps=stats["aggregate_tps"]))
    url = lan_url()
    if url:
        st.caption(t(lang, "server_lan", url=url))


def answer_settings(settings: Settings, lang: str, busy: bool) -> None:
    """Sliders from the settings' own bounds; the answer length never above the operator's flag."""
    opts = options()
    with st.expander(t(lang, "settings"), icon=":material/tune:"):
        st.text_area(t(lang, "system"), key="system", help=t(lang, "system_help"), disabled=busy, height=80,
                     max_chars=settings.max_input_chars)  # fmt: skip
        for key in ("temperature", "top_p", "repetition_penalty"):
            o = opts[key]
            low = o.minimum if o.minimum is not None else o.page_step  # "above 0" starts one step up
            st.slider(t(lang, key), low, o.maximum, step=o.page_step, key=key, disabled=busy)
        st.caption(t(lang, "temperature_help"))
        st.number_input(t(lang, "top_k"), 0, int(opts["top_k"].maximum), step=1, key="top_k", disabled=busy)
        st.number_input(t(lang, "max_new_tokens"), 1, settings.max_new_tokens, step=16, key="max_new_tokens",
                        disabled=busy)  # fmt: skip
        st.caption(t(lang, "settings_note"))


def export_buttons(runtime: Runtime, conv: Conversation, lang: str) -> None:
    model = str(runtime.info.get("model_name", "model"))
    system = conv.system or None
    roles = {"user": t(lang, "role_user"), "assistant": t(lang, "role_assistant")}
    title = t(lang, "export_title", model=model)
    markdown = export.to_markdown(conv.records, title=title, role_names=roles, caption=lambda s: stats_line(s, lang),
                                  system=system)  # fmt: skip
    data = export.to_json(conv.records, model=model, system=system, sampling=asdict(conv.sampling))
    row = st.container(horizontal=True)
    for label, content, ext, mime in (("Markdown", markdown, "md", "text/markdown"),
                                      ("JSON", data, "json", "application/json")):  # fmt: skip
        row.download_button(label, content, file_name=export.filename(model, ext), mime=mime, key=f"export_{ext}",
                            on_click="ignore", disabled=not conv.records, icon=":material/download:")  # fmt: skip


def sidebar(runtime: Runtime, conv: Conversation, settings: Settings, lang: str, busy: bool) -> None:
    with st.sidebar:
        st.button(t(lang, "new_chat"), key="new_chat", on_click=new_chat, icon=":material/add:", width="stretch")
        answer_settings(settings, lang, busy)
        st.subheader(t(lang, "server"))
        server_panel(runtime, lang)
        st.subheader(t(lang, "export"))
        export_buttons(runtime, conv, lang)


def message_body(record: dict, runtime: Runtime, lang: str) -> None:
    content = record["content"] + (STOPPED_MARK if record.get("stopped") else "")
    st.markdown(safe_markdown(content))
    if record.get("error"):
        st.error(record["error"])
    if record.get("interrupted"):
        st.info(t(lang, "interrupted"), icon=":material/pause_circle:")
    if record.get("trimmed"):
        st.info(t(lang, "trimmed", n=record["trimmed"], context=runtime.info.get("context_length", "?")), icon="✂️")
    if record.get("stats"):
        st.caption(stats_line(record["stats"], lang))


def show_history(conv: Conversation, runtime: Runtime, lang: str) -> None:
    records = conv.records[:-1] if conv.busy else conv.records
    for i, record in enumerate(records):
        with st.chat_message(record["role"]):
            message_body(record, runtime, lang)
            if i == len(records) - 1 and record["role"] == "assistant" and not conv.busy:
                last_turn_actions(conv, lang)


def last_turn_actions(conv: Conversation, lang: str) -> None:
    ss = st.session_state
    if ss.editing:
        question = next(r["content"] for r in reversed(conv.records) if r["role"] == "user")
        with st.form("edit"):
            st.text_area(t(lang, "edit_label"), value=question, key="edit_text")
            row = st.container(horizontal=True)
            row.form_submit_button(t(lang, "resend"), type="primary",
                                   on_click=lambda: act("edit", st.session_state.edit_text))  # fmt: skip
            row.form_submit_button(t(lang, "cancel"), on_click=lambda: ss.update(editing=False))
        return
    row = st.container(horizontal=True)
    row.button(t(lang, "regenerate"), key="regenerate", on_click=act, args=("regenerate",),
               icon=":material/refresh:", type="tertiary")  # fmt: skip
    row.button(t(lang, "edit"), key="edit", on_click=lambda: ss.update(editing=True), icon=":material/edit:",
               type="tertiary")  # fmt: skip
    if conv.can_continue:
        row.button(t(lang, "continue"), key="continue", on_click=act, args=("continue_answer",),
                   icon=":material/play_arrow:", type="tertiary")  # fmt: skip


def follow_answer(conv: Conversation, runtime: Runtime, lang: str) -> None:
    """Render the answer in progress until it ends. Every redraw is a point where Streamlit can
    end this run: for a rerun (Stop's callback, any widget; with runner.fastReruns a rerun stops
    this run and starts a new one, which follows the answer again) or because the page went away
    (tab closed, network gone), which interrupts the answer so its sequence is freed at once."""
    answer = conv.answer
    assert answer is not None
    with st.chat_message("assistant"):
        status, body = st.empty(), st.empty()
        st.button(t(lang, "stop"), key="stop", on_click=stop, help=t(lang, "stop_help"), icon=":material/stop_circle:")
        shown, drawn = None, 0.0
        try:
            while answer.running:
                answer.touch()
                answer.wait(len(shown or ""), FRAME_S)
                text = answer.record["content"]
                if text != shown or time.monotonic() - drawn >= KEEPALIVE_S:
                    if answer.queued is not None and not text:
                        status.caption(t(lang, "queued", position=answer.queued.position, eta=answer.queued.eta_s))
                    elif shown is None or text != shown:
                        status.empty()
                    body.markdown(safe_markdown(text) + CURSOR)
                    shown, drawn = text, time.monotonic()
        except StopException:
            interrupt_if_gone(conv)
            raise
    st.rerun()  # redraw without the Stop button, with the input enabled


def interrupt_if_gone(conv: Conversation) -> None:
    """A stopped run is a rerun or a page that went away; Streamlit drops a closed page's session
    from its active ones right after stopping its run, so ask a moment later."""
    ctx = get_script_run_ctx()
    if ctx is None or not streamlit_runtime.exists():
        return
    session, instance = ctx.session_id, streamlit_runtime.get_instance()

    def check() -> None:
        if not instance.is_active_session(session):
            conv.stop(interrupted=True)

    threading.Timer(GONE_CHECK_S, check).start()


def main() -> None:
    st.set_page_config(page_title="edgechat", page_icon="💬")
    settings = load_settings()
    init_session(settings)
    ss = st.session_state
    busy = bool(ss.get("conversation") and ss.conversation.busy)
    with st.sidebar:
        st.radio(t(ss.lang, "language"), LANGS, format_func=LANG_NAMES.get, key="lang", horizontal=True, disabled=busy)
    lang = ss.lang
    if not password_gate(settings, lang):
        return
    runtime = load_runtime(settings, lang)
    conv = session_conversation(runtime, settings)
    busy = conv.busy
    st.title(runtime.info.get("model_name", "edgechat"))
    st.caption(t(lang, "tagline", backend=runtime.info.get("backend", "?")))
    sidebar(runtime, conv, settings, lang, busy)
    show_history(conv, runtime, lang)
    for message in conv.refusals:
        ss.flash.append(("warning", message))
    conv.refusals.clear()
    if conv.dropped:
        ss.flash.append(("info", t(lang, "dropped", n=conv.dropped, records=len(conv.records))))
        conv.dropped = 0
    for kind, text in ss.flash:
        getattr(st, kind)(text)
    ss.flash = []
    st.chat_input(t(lang, "ask"), key="prompt", disabled=busy, max_chars=settings.max_input_chars,
                  on_submit=lambda: act("ask", st.session_state.prompt))  # fmt: skip
    if busy:
        follow_answer(conv, runtime, lang)


if __name__ == "__main__":  # a script run of the page
    main()
else:  # imported by `streamlit run`, which serves this app: the page plus edgechat.server's routes
    from edgechat.server import app_options

    try:
        _settings = parse_settings(sys.argv[1:], prog="web_demo.py")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    app = st.App(__file__, **app_options(_settings))
