"""The tab title says where your answer is, so someone who queued and switched tabs learns it
started and ended: "◌ queued · edgechat", "● answering · edgechat", then "✓ answered · edgechat"
until they look at the tab again. No sound, no notification permission prompt.

A Streamlit v2 component with no visible part. The script says the state ("queued", "answering",
"idle"); the browser keeps what it saw last (on `window`, across reruns and remounts) and turns an
answer that ended while the tab was hidden into "✓ answered". Streamlit sets the title from
`st.set_page_config` on each run; a MutationObserver puts ours back while it applies.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from edgechat.ui_text import t

STATES = ("idle", "queued", "answering")
JS = """
export default function ({ data }) {
  const s = (window.__edgechatTitle ||= { state: "idle", answered: false, observer: null, apply: null });
  const titled = () => {
    const mark = s.state === "queued" ? data.queued : s.state === "answering" ? data.answering
      : s.answered ? data.answered : "";
    const want = mark ? mark + " · " + data.base : data.base;
    if (document.title !== want) document.title = want;  // only on a change: the observer sees it
  };
  if (s.state !== "idle" && data.state === "idle" && document.hidden) s.answered = true;
  if (data.state !== "idle") s.answered = false;
  s.state = data.state;
  if (!s.observer) {
    s.observer = new MutationObserver(() => s.apply());
    s.observer.observe(document.head, { subtree: true, childList: true, characterData: true });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && s.answered) { s.answered = false; s.apply(); }
    });
  }
  s.apply = titled;
  titled();
}
"""

_component = st.components.v2.component("edgechat_tab_title", js=JS)


def tab_title(where: Any, state: str, lang: str, base: str = "edgechat") -> None:
    """Mount the title keeper for `state` in `where` (a container or an st.empty placeholder)."""
    assert state in STATES
    data = {"state": state, "base": base, **{k: t(lang, f"title_{k}") for k in ("queued", "answering", "answered")}}
    with where:
        _component(key=f"tab_title_{state}", data=data, width="content")
