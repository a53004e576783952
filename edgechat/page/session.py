"""One browser session's state: who it is (client address, owner cookie), its conversation and
that conversation's saved copy. Everything here lives in `st.session_state`; nothing is shared
between sessions except the process-wide runtime, store and limits.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import replace

import streamlit as st
from streamlit import runtime as streamlit_runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from edgechat.access import ClientLimits, client_address, shared_limits
from edgechat.chats import SavedChat, shared_store, wait_until_idle
from edgechat.clients import conversation_for
from edgechat.config import ENV_PREFIX, Settings, parse_settings
from edgechat.conversation import Conversation
from edgechat.owner import owner_in_script
from edgechat.runtime import Runtime, shared_runtime
from edgechat.store import Store, StoreUnavailable
from edgechat.ui_text import t

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
# An answer whose page has shown no sign of life for this long is interrupted (a backstop for a page
# that went away unseen): signs are the question, every frame the page's run renders, and the page's
# session still being open in Streamlit's runtime (a slow page is not a closed page).
GONE_S = 5.0
LOOPBACK = "127.0.0.1"


def page_settings(argv: list[str]) -> Settings:
    """The page's flags and EDGECHAT_* variables, parsed once per process as long as they stay the
    same: argparse and the settings' type hints took ~50 ms of every script run of every page (the
    page path's profile, issue 23). A bad flag raises ConfigError each time (errors are not cached)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)))
    return _parsed(tuple(argv), env)


@functools.lru_cache(maxsize=8)
def _parsed(argv: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> Settings:
    return parse_settings(list(argv), env=dict(env), prog="web_demo.py")


def init_session(settings: Settings) -> None:
    """This browser session's state, seeded from the flags; nothing here is shared."""
    ss = st.session_state
    if "authed" in ss:
        return
    ss.settings = settings  # the widget callbacks need them before the script runs
    ss.flash = []  # [(kind, text)] shown once, after a rerun
    ss.editing = False
    ss.authed = not settings.password
    ss.lang = settings.lang
    ss.deleted_chat = None  # the chat deleted last, while it can be restored
    if "address" not in ss:  # tests set it: AppTest cannot give a session an address
        peer = st.context.ip_address or LOOPBACK  # Streamlit reports no address for a loopback peer
        ss.address = client_address(peer, st.context.headers, settings.trusted_proxy)
    if "owner" not in ss:  # the owner cookie the page's first request set (edgechat.owner)
        ss.owner = owner_in_script()
    apply_chat_settings({"system": settings.system or "", "sampling": {}})


def limits() -> ClientLimits:
    settings: Settings = st.session_state.settings
    return shared_limits(settings.rate_limit, settings.max_in_flight)


def store() -> Store | None:
    """The saved-chats store, or None when history is off (the reason is flashed once)."""
    ss = st.session_state
    settings: Settings = ss.settings
    if settings.no_history:
        return None
    if ss.owner is None:  # no cookie (a client without cookies): chats stay in this session
        return None
    try:
        return shared_store(settings.data_dir, settings.keep_days)
    except StoreUnavailable as err:
        if not ss.get("history_off_said"):
            ss.flash.append(("warning", t(ss.lang, "history_off", reason=str(err))))
            ss.history_off_said = True
        return None


def apply_chat_settings(chat_settings: dict) -> None:
    """Put a chat's saved system prompt and sampling into this session's widgets (call it before
    the widgets are drawn, or from a callback)."""
    ss = st.session_state
    settings: Settings = ss.settings
    ss.system = chat_settings.get("system", "")
    sampling = chat_settings.get("sampling", {})
    for key in SAMPLING_KEYS:
        value = sampling.get(key, getattr(settings, key))
        if key == "max_new_tokens":
            value = min(int(value), settings.max_new_tokens)  # the operator's cap is a cap
        ss[key] = type(getattr(settings, key))(value)


def session_conversation(runtime: Runtime) -> Conversation:
    """This session's conversation, with the widgets' current settings. The first run opens the
    chat named in the URL; after a runtime rebuild the records move to a new client."""
    ss = st.session_state
    conv: Conversation | None = ss.get("conversation")
    if conv is None:
        chat_id = st.query_params.get("chat")
        if chat_id is None or not open_chat(chat_id, runtime):
            start_new_chat(runtime)
        conv = ss.conversation
    elif conv.client.backend is not runtime.backend:
        fresh = _new_conversation(runtime, conv.client.cache_key)
        fresh.records = conv.records
        if ss.saved is not None:
            ss.saved.attach(fresh)
        ss.conversation = conv = fresh
    refusal = conv.set_system(ss.system)
    if refusal is not None:  # a crafted message past the widget's max_chars: keep the last good one
        ss.flash.append(("warning", t(ss.lang, refusal.key, **refusal.fields)))
        ss.system = conv.system
    conv.sampling = replace(conv.sampling, **{k: type(getattr(conv.sampling, k))(ss[k]) for k in SAMPLING_KEYS})
    return conv


def live_conversation() -> Conversation:
    """The conversation on a live runtime (widget callbacks run before the script: rebuild here
    if the engine died meanwhile)."""
    return session_conversation(shared_runtime(st.session_state.settings))


def _new_conversation(runtime: Runtime, cache_key: str | None = None) -> Conversation:
    ss = st.session_state
    conv = conversation_for(runtime, ss.settings, cache_key)
    conv.watch_s = GONE_S
    conv.alive = session_alive()
    conv.admission = lambda address=ss.address: limits().acquire(address)
    return conv


def session_alive() -> Callable[[], bool] | None:
    """Whether this browser session is still open, askable from any thread: Streamlit drops a closed
    tab's session from its active ones (a dropped connection's after its reconnect grace). None
    outside a served page (AppTest)."""
    ctx = get_script_run_ctx()
    if ctx is None or not streamlit_runtime.exists():
        return None
    session_id, instance = ctx.session_id, streamlit_runtime.get_instance()
    return lambda: instance.is_active_session(session_id)


def start_new_chat(runtime: Runtime) -> None:
    ss = st.session_state
    old: Conversation | None = ss.get("conversation")
    if old is not None:
        old.stop()
    ss.conversation = _new_conversation(runtime)
    book = store()
    ss.saved = SavedChat(book, ss.owner) if book is not None else None
    if ss.saved is not None:
        ss.saved.attach(ss.conversation)
    st.query_params.pop("chat", None)
    ss.editing = False


def open_chat(chat_id: str, runtime: Runtime) -> bool:
    """Show a saved chat of this owner; False (and a notice) when there is none by that id,
    including another owner's: the two are never told apart."""
    ss = st.session_state
    book = store()
    chat = None
    if book is not None:
        wait_until_idle(chat_id)  # a reload mid-answer: read after that answer's last save
        chat = book.get(ss.owner, chat_id)
    if chat is None:
        ss.flash.append(("warning", t(ss.lang, "chat_not_found")))
        st.query_params.pop("chat", None)
        return False
    old: Conversation | None = ss.get("conversation")
    if old is not None:
        old.stop()
    conv = _new_conversation(runtime, chat.id)
    conv.records = chat.messages
    ss.conversation = conv
    ss.saved = SavedChat(book, ss.owner, chat.id, chat.messages)
    ss.saved.attach(conv)
    apply_chat_settings(chat.settings)
    st.query_params["chat"] = chat.id
    ss.editing = False
    return True


def keep_url_current() -> None:
    """The open chat's id in the address bar once it is saved (its first question)."""
    saved: SavedChat | None = st.session_state.get("saved")
    if saved is not None and saved.chat_id is not None and st.query_params.get("chat") != saved.chat_id:
        st.query_params["chat"] = saved.chat_id
