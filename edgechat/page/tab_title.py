"""The tab title says where your answer is, so someone who queued and switched tabs learns it
started and ended: "◌ queued · edgechat", "● answering · edgechat", then "✓ answered · edgechat"
until they look at the tab again. No sound, no notification permission prompt.

A Streamlit v2 component with no visible part. The script says the state ("queued", "answering",
"idle"); the browser keeps what it saw last (on `window`, across reruns and remounts) and turns an
answer that ended while the tab was hidden into "✓ answered". Streamlit sets the title from
`st.set_page_config` on a run: while a mark applies, a 1 s timer puts it back (an observer of the
title fought Streamlit's own title setting and froze the tab).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from edgechat.ui_text import t

STATES = ("idle", "queued", "answering")
JS = """
export default function ({ data }) {
  const s = (window.__edgechatTitle ||= { state: "idle", answered: false, timer: null, apply: null });
  const mark = () => s.state === "queued" ? data.queued : s.state === "answering" ? data.answering
    : s.answered ? data.answered : "";
  const titled = () => {
    const m = mark();
    if (m) {  // with no mark the title is Streamlit's: never touched, so nothing to fight over
      const want = m + " · " + data.base;
      if (document.title !== want) document.title = want;
    } else if (s.timer) {
      clearInterval(s.timer);
      s.timer = null;
      document.title = data.base;
    }
  };
  if (s.state !== "idle" && data.state === "idle" && document.hidden) s.answered = true;
  if (data.state !== "idle") s.answered = false;
  s.state = data.state;
  s.apply = titled;
  if (!s.listening) {
    s.listening = true;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && s.answered) { s.answered = false; s.apply(); }
    });
  }
  // Streamlit sets the title from st.set_page_config on a run: put the mark back within a second.
  if (mark() && !s.timer) s.timer = setInterval(() => s.apply(), 1000);
  titled();
}
"""

_component = st.components.v2.component("edgechat_tab_title", js=JS)


def tab_title(where: Any, state: str, lang: str, answer_id: int, mount: int = 0) -> None:
    """Mount the title keeper for `state` in `where` (a container or an st.empty placeholder).
    `answer_id` names the conversation's latest answer: the browser runs a component's code again
    only when its data changes, so "idle" after an answer must differ from "idle" before it.
    `mount` tells apart the mounts of one run: an answer can go answering -> queued -> answering
    (its first frame comes before the queue's first word), and a key used twice in a run is an error."""
    assert state in STATES
    labels = {k: t(lang, f"title_{k}") for k in ("queued", "answering", "answered")}
    data = {"state": state, "answer": answer_id, "base": "edgechat", **labels}
    with where:
        _component(key=f"tab_title_{state}_{mount}", data=data, width="content")
