"""The chat page: `streamlit run web_demo.py [-- FLAGS]` (same flags as baichuan2.py).

Reads top to bottom as what the user sees. The model is loaded once per process
(edgechat.runtime.shared_runtime) and shared by every browser session; each session keeps its own
Conversation (records, system prompt, sampling) in `st.session_state`, saved as it changes
(edgechat.chats). An answer is produced by the conversation's own thread; this page only renders
it, so a rerun never loses an answer. Layout pieces live in edgechat/page/, strings in
edgechat/ui_text.py. Imported by `streamlit run` (not a script run), this file is the ASGI app:
the page plus edgechat.server's routes (the API, /metrics, /healthz) on the same port.
"""

from __future__ import annotations

import sys

import streamlit as st

from edgechat.access import password_ok
from edgechat.config import LANGS, Settings, parse_settings
from edgechat.conversation import Conversation, Refusal
from edgechat.errors import ConfigError
from edgechat.page import session
from edgechat.page.join_qr import presenter_qr
from edgechat.page.messages import context_meter, follow_answer, handout_box, show_history
from edgechat.page.sidebar import sidebar
from edgechat.page.tab_title import tab_title
from edgechat.runtime import Runtime, shared_runtime
from edgechat.safe_markdown import plain_text
from edgechat.ui_text import LANG_NAMES, t


def load_settings() -> Settings:
    try:
        return session.page_settings(sys.argv[1:])
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


def load_runtime(settings: Settings, lang: str) -> Runtime:
    try:
        with st.spinner(t(lang, "loading")):
            return shared_runtime(settings)
    except ConfigError as err:
        st.error(plain_text(str(err), max_chars=1000))
        st.stop()
        raise


# ---- actions (widget callbacks: they run before the script, so the page redraws once) ----


def act(action: str, text: str | None = None) -> None:
    """ask / regenerate / edit / continue on this session's conversation, within the limits."""
    ss, lang = st.session_state, st.session_state.lang
    wait = session.limits().question(ss.address)
    if wait:
        ss.flash.append(("warning", t(lang, "rate_limited", limit=ss.settings.rate_limit, wait=wait)))
        return
    conv = session.live_conversation()
    run = {"ask": conv.ask, "edit": conv.edit}
    refusal: Refusal | None = run[action](text or "") if action in run else getattr(conv, action)()
    if refusal is not None:
        kind = "info" if refusal.key == "blank" else "warning"
        ss.flash.append((kind, t(lang, refusal.key, **refusal.fields)))
    ss.editing = False


def stop() -> None:
    st.session_state.conversation.stop()


def last_turn_actions(conv: Conversation, lang: str) -> None:
    """Under the last answer: regenerate, edit the question (a form), continue a cut answer."""
    ss = st.session_state
    if ss.editing:
        question = next(r["content"] for r in reversed(conv.records) if r["role"] == "user")
        with st.form("edit"):
            st.text_area(t(lang, "edit_label"), value=question, key="edit_text", max_chars=ss.settings.max_input_chars)
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


def password_gate(settings: Settings, lang: str) -> bool:
    """True once this session gave the password; until then nothing else of the page is drawn.
    Tries are limited per client address across the whole server, not per session."""
    ss = st.session_state
    if ss.authed:
        return True
    st.title("edgechat")
    st.subheader(t(lang, "password_title"))
    with st.form("login"):
        st.text_input(t(lang, "password"), type="password", key="password_input", max_chars=1000)
        submitted = st.form_submit_button(t(lang, "password_enter"), type="primary")
    if submitted:
        wait = session.limits().password_try(ss.address)
        if wait:
            st.error(t(lang, "password_locked", wait=wait))
        elif password_ok(ss.password_input or "", settings.password or ""):
            ss.authed = True
            st.rerun()
        else:
            st.error(t(lang, "password_wrong"))
    return False


def main() -> None:
    st.set_page_config(page_title="edgechat", page_icon="💬")
    settings = load_settings()
    session.init_session(settings)
    ss = st.session_state
    busy = bool(ss.get("conversation") and ss.conversation.busy)
    with st.sidebar:
        st.radio(t(ss.lang, "language"), LANGS, format_func=LANG_NAMES.get, key="lang", horizontal=True, disabled=busy)
    lang = ss.lang
    if not password_gate(settings, lang):
        return
    runtime = load_runtime(settings, lang)
    conv = session.session_conversation(runtime)
    session.keep_url_current()
    busy = conv.busy
    st.title(plain_text(runtime.info.get("model_name", "edgechat")))
    st.caption(t(lang, "tagline", backend=runtime.info.get("backend", "?")))
    handout_box(runtime, lang)
    presenter_qr(settings, lang)
    sidebar(runtime, conv, settings, lang, busy)
    answer_place = show_history(conv, runtime, lang, busy, last_turn_actions)  # the answer being written goes there
    ss.flash += [("warning", plain_text(message, max_chars=1000)) for message in conv.refusals]
    conv.refusals.clear()
    if conv.dropped:
        ss.flash.append(("info", t(lang, "dropped", n=conv.dropped)))
        conv.dropped = 0
    for kind, text in ss.flash:
        getattr(st, kind)(text)
    if not busy:  # a busy run ends in a rerun (follow_answer), whose page would no longer show them
        ss.flash = []
    st.chat_input(t(lang, "ask"), key="prompt", disabled=busy, max_chars=settings.max_input_chars,
                  on_submit=lambda: act("ask", st.session_state.prompt))  # fmt: skip
    context_meter(conv, lang)
    if answer_place is not None:
        follow_answer(conv, lang, answer_place, stop)
    tab_title(st.sidebar, "idle", lang, id(conv.answer))  # one that ended in a hidden tab: "✓ answered"


if __name__ == "__main__":  # a script run of the page
    main()
else:  # imported by `streamlit run`, which serves this app: the page plus edgechat.server's routes
    from edgechat.server import app_options
    from edgechat.tls import serve_tls

    try:
        _settings = parse_settings(sys.argv[1:], prog="web_demo.py")
        serve_tls(_settings)  # --tls: restarts this command line once with Streamlit's certificate options
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    app = st.App(__file__, **app_options(_settings))
