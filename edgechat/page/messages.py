"""The chat itself: past messages with their notices and actions, the answer in progress, and
the context meter under the input."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from edgechat.conversation import Conversation
from edgechat.page.copy_button import copy_button
from edgechat.page.tab_title import tab_title
from edgechat.reasoning import split_reasoning
from edgechat.runtime import Runtime
from edgechat.safe_markdown import plain_text, safe_markdown
from edgechat.ui_text import stats_line, t

STOPPED_MARK = " ⏹"
CURSOR = " ▌"
REASONING_TAIL = 300  # characters of a think part shown while the model is still thinking
FRAME_S = 0.1  # the streaming answer is redrawn at most ~10 times a second, only when it changed
GONE_CHECK_S = 0.2  # after a run is stopped, when to ask Streamlit whether the page is still there


def handout_box(runtime: Runtime, lang: str) -> None:
    """The room's --handout, folded, at the top of the page: every answer has read it."""
    if runtime.handout:
        with st.expander(t(lang, "handout"), icon=":material/description:"):
            st.markdown(safe_markdown(runtime.handout))


def message_body(record: dict[str, Any], runtime: Runtime, lang: str) -> None:
    chat = runtime.tokenizer  # None for a remote server
    split = record["role"] == "assistant" and chat is not None and chat.reasoning
    reasoning, answer = split_reasoning(record["content"], chat.opens_reasoning) if split else ("", "")
    content = (answer if reasoning else record["content"]) + (STOPPED_MARK if record.get("stopped") else "")
    st.markdown(safe_markdown(content))
    if reasoning:  # a reasoning model's <think> part, folded under its answer
        with st.expander(t(lang, "reasoning"), icon=":material/psychology:"):
            st.markdown(safe_markdown(reasoning))
    if record.get("error"):
        st.error(plain_text(record["error"], max_chars=1000))
    if record.get("interrupted"):
        st.info(t(lang, "interrupted"), icon=":material/pause_circle:")
    if record.get("trimmed"):
        st.info(t(lang, "trimmed", n=record["trimmed"], context=runtime.info.get("context_length", "?")), icon="✂️")
    if record.get("stats"):
        st.caption(stats_line(record["stats"], lang))


def show_history(
    conv: Conversation, runtime: Runtime, lang: str, busy: bool, actions: Callable[[Conversation, str], None]
) -> DeltaGenerator | None:
    """Every message but the answer being written; the last answer gets its actions. While `busy`,
    returns the place of the answer being written, right after the history: the run after the
    answer ends draws the finished answer at that same place, so Streamlit replaces it there
    instead of showing it twice (finished above the context meter, still streaming below it)."""
    records = conv.records[:-1] if busy else list(conv.records)
    for i, record in enumerate(records):
        with st.chat_message(record["role"]):
            message_body(record, runtime, lang)
            if record["role"] == "assistant" and record["content"]:
                copy_button(record["content"], key=f"copy_{i}", lang=lang)
            if i == len(records) - 1 and record["role"] == "assistant" and not busy:
                actions(conv, lang)
    return st.empty() if busy else None


def context_meter(conv: Conversation, lang: str) -> None:
    """How much of the context the conversation takes before the next question, so people see
    the ✂️ trimming coming. Measured once per change of the conversation, not per rerun."""
    version = (id(conv), len(conv.records), sum(len(r["content"]) for r in conv.records[-2:]), conv.system)
    ss = st.session_state
    if ss.get("meter_version") != version:
        backend = conv.client.backend
        ss.meter_used = backend.prompt_size(conv.messages_for_model()) if conv.records or conv.system else 0
        ss.meter_version = version
    st.caption(t(lang, "meter", used=ss.meter_used, context=conv.client.backend.max_len))


def follow_answer(conv: Conversation, lang: str, place: DeltaGenerator, on_stop: Callable[[], None]) -> None:
    """Render the answer in progress until it ends. Every redraw is a point where Streamlit can
    end this run: for a rerun (Stop's callback, any widget; with runner.fastReruns a rerun stops
    this run and starts a new one, which follows the answer again) or because the page went away
    (tab closed, network gone), which interrupts the answer so its sequence is freed at once."""
    answer = conv.answer
    assert answer is not None
    chat = conv.client.tokenizer  # a reasoning model's think part is shown apart while it streams
    thinks = chat is not None and chat.reasoning
    # In a container of its own at `place`: a block of another type than the chat message drawn
    # there before (the answer Regenerate replaces) or after (the finished answer) shares none of
    # its elements, so no stale button of the old answer lingers while this one is written.
    with place.container(), st.chat_message("assistant"):
        status, body = st.empty(), st.empty()
        st.button(t(lang, "stop"), key="stop", on_click=on_stop, help=t(lang, "stop_help"),
                  icon=":material/stop_circle:")  # fmt: skip
        shown, title, state, mounts = None, st.sidebar.empty(), "", 0
        try:
            while answer.running:
                answer.touch()
                answer.wait(len(shown or ""), FRAME_S)
                st.session_state.get("conversation")  # sends nothing; where Stop or a closed tab ends this run
                text = answer.record["content"]
                if state != (now := "queued" if answer.queued is not None and not text else "answering"):
                    tab_title(title, now, lang, id(answer), mounts)  # the tab says it, for someone in another tab
                    state, mounts = now, mounts + 1
                if answer.queued is not None and not text:
                    status.caption(t(lang, "queued", position=answer.queued.position, eta=answer.queued.eta_s))
                elif text != shown:
                    if shown is None or not shown:
                        status.empty()
                    reasoning, visible = split_reasoning(text, chat.opens_reasoning) if thinks else ("", text)
                    if reasoning and not visible:  # still thinking: its last lines, quietly
                        body.caption(plain_text(reasoning[-REASONING_TAIL:]) + CURSOR)
                    else:
                        body.markdown(safe_markdown(visible) + CURSOR)
                    shown = text
                    time.sleep(FRAME_S)  # at most ~10 redraws a second: each is a message and a render
        except StopException:
            interrupt_if_gone(conv)
            raise
    st.rerun()  # redraw without the Stop button, with the input enabled


def interrupt_if_gone(conv: Conversation) -> None:
    """A stopped run is a rerun or a page that went away; Streamlit drops a closed page's session
    from its active ones right after stopping its run, so ask a moment later."""
    alive = conv.alive
    if alive is None:
        return

    def check() -> None:
        if not alive():
            conv.stop(interrupted=True)

    threading.Timer(GONE_CHECK_S, check).start()
