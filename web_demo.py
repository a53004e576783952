"""The chat page: `streamlit run web_demo.py [-- FLAGS]` (same flags as baichuan2.py).

Reads top to bottom as what the user sees. The model is loaded once per process
(`st.cache_resource`) and shared by every browser session; each session keeps its own client,
history and settings in `st.session_state`.
"""

from __future__ import annotations

import sys
import time

import streamlit as st

from baichuan2 import Baichuan2, client_for
from edgechat.client import BLANK_INPUT_HINT
from edgechat.config import Settings, parse_settings
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, load_runtime
from edgechat.scheduler import Event
from edgechat.templates import Message

STOPPED_MARK = " ⏹"
STREAM_INTERVAL_S = 0.05


@st.cache_resource(show_spinner=False)
def get_settings(argv: tuple[str, ...]) -> Settings:
    return parse_settings(argv, prog="web_demo.py")


@st.cache_resource(show_spinner=False)
def get_runtime(argv: tuple[str, ...]) -> Runtime:
    """ONE model per process, whatever the number of sessions."""
    return load_runtime(get_settings(argv))


def load() -> tuple[Runtime, Settings]:
    argv = tuple(sys.argv[1:])
    try:
        with st.spinner("Loading the model…"):
            return get_runtime(argv), get_settings(argv)
    except ConfigError as err:
        st.error(str(err))
        st.stop()
        raise


def session_client(runtime: Runtime, settings: Settings) -> Baichuan2:
    ss = st.session_state
    if "client" not in ss:
        ss.handle, ss.engine, ss.tokenizer = runtime.handle, runtime.engine, runtime.tokenizer
        ss.client = client_for(runtime, settings)
        ss.messages = []  # [{"role", "content", "stats"?}]
        ss.partial = None  # answer text while streaming; kept if the run is interrupted (Stop)
    return ss.client


def keep_interrupted_answer() -> None:
    """A rerun that arrives while an answer streams (Stop, or any click) interrupts it: keep the
    partial answer in the history, marked as stopped."""
    ss = st.session_state
    if ss.partial is not None:
        ss.messages.append({"role": "assistant", "content": ss.partial + STOPPED_MARK})
        ss.partial = None


def new_chat(client: Baichuan2) -> None:
    st.session_state.messages = []
    st.session_state.partial = None
    client.engine.forget_session(client.session)


def history_for_model() -> list[Message]:
    out = []
    for m in st.session_state.messages:
        content = m["content"].removesuffix(STOPPED_MARK)
        out.append(Message(role=m["role"], content=content))
    return out


def sidebar(runtime: Runtime, client: Baichuan2) -> None:
    info = runtime.info
    with st.sidebar:
        st.button("New chat", on_click=new_chat, args=(client,), use_container_width=True)
        st.subheader("Server")
        st.caption(f"**{info['model_name']}** · {info['backend']}")
        st.caption(f"{info['device']} · context {info['context_length']} tokens")
        if getattr(runtime.engine, "chat_level", False):  # a remote server
            st.caption(runtime.engine.health())  # a cached /v1/models round trip
        stats = runtime.engine.stats()
        st.caption(
            f"running {stats['running'] + stats['prefilling']} · waiting {stats['waiting']} · "
            f"{stats['aggregate_tps']:.1f} tok/s"
        )


def show_history() -> None:
    for m in st.session_state.messages:
        with st.chat_message(m["role"]):
            st.markdown(m["content"])
            if m.get("stats"):
                st.caption(m["stats"])


def answer(client: Baichuan2, prompt: str) -> None:
    ss = st.session_state
    history = history_for_model()
    ss.messages.append({"role": "user", "content": prompt})
    with st.chat_message("user"):
        st.markdown(prompt)
    with st.chat_message("assistant"):
        status = st.empty()
        st.button("Stop generating", key="stop", help="stop this answer and keep what was written")

        def on_event(event: Event) -> None:
            if event.kind == "queued":
                status.caption(f"queue position {event.position}, about {event.eta_s:.0f} s")

        def pieces():  # noqa: ANN202 — a generator for st.write_stream
            """Coalesce tokens into ~20 updates a second: each update is a websocket message and a
            Markdown re-render in every browser, CPU the model would rather have."""
            ss.partial, pending, flushed = "", "", time.monotonic()
            for piece in client.chat_stream(prompt, history):
                status.empty()
                ss.partial += piece
                pending += piece
                if time.monotonic() - flushed >= STREAM_INTERVAL_S:
                    yield pending
                    pending, flushed = "", time.monotonic()
            if pending:
                yield pending

        client.on_event = on_event
        text = st.write_stream(pieces())
        ss.partial = None
        stats = client.last_stats
        if stats.error:
            st.error(stats.error)
        elif stats.notice:
            st.warning(stats.notice)
        summary = stats.summary() if stats.completion_tokens else ""
        if summary:
            st.caption(summary)
    if stats.notice and not stats.completion_tokens:
        ss.messages.pop()  # the question was not answered: let the user edit and resend it
        return
    ss.messages.append({"role": "assistant", "content": text if isinstance(text, str) else "", "stats": summary})
    st.rerun()  # redraw without the Stop button


def main() -> None:
    st.set_page_config(page_title="edgechat", page_icon="💬")
    runtime, settings = load()
    client = session_client(runtime, settings)
    keep_interrupted_answer()
    st.title(runtime.info["model_name"])
    st.caption(f"edgechat · {runtime.info['backend']} · one shared model, your own conversation")
    sidebar(runtime, client)
    show_history()
    prompt = st.chat_input("Ask a question")
    if prompt is None:
        return
    if not prompt.strip():
        st.info(BLANK_INPUT_HINT)
        return
    answer(client, prompt)


main()
