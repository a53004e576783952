"""One click copies an answer's raw Markdown, on plain HTTP too.

Streamlit's own copy button (on `st.code`) uses the clipboard API, which browsers give only to
secure origins (https, localhost): on a LAN address over http it is not drawn at all. This button
is a Streamlit v2 component (drawn in the page, not an iframe, so no clipboard permission policy
stands between it and the document) that uses the clipboard API where it exists and otherwise
`document.execCommand('copy')` on a selected, off-screen textarea during the click, which browsers
still allow on a user gesture. If both fail, the text is shown selected with a hint to press copy
by hand: the button never silently does nothing.
"""

from __future__ import annotations

import streamlit as st

from edgechat.ui_text import t

HTML = """<span class="edgechat-copy">
<button type="button" class="copy"></button><span class="status" role="status" aria-live="polite"></span>
<textarea class="manual" readonly hidden></textarea></span>"""
CSS = """
.copy { font: inherit; font-size: 0.875rem; color: inherit; background: none; border: none; padding: 0.25rem 0;
        cursor: pointer; opacity: 0.8; display: inline-flex; align-items: center; gap: 0.35rem; }
.copy:hover, .copy:focus-visible { opacity: 1; text-decoration: underline; }
.status { font-size: 0.8rem; margin-left: 0.6rem; opacity: 0.8; }
.manual { display: block; width: 100%; box-sizing: border-box; min-height: 6rem; margin-top: 0.4rem;
          font: 0.8rem monospace; }
.manual[hidden] { display: none; }
"""
JS = """
const ICON = '<svg width="16" height="16" viewBox="0 0 24 24" aria-hidden="true"><path fill="currentColor" '
  + 'd="M16 1H4a2 2 0 0 0-2 2v14h2V3h12V1zm3 4H8a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h11a2 2 0 0 0 2-2V7a2 2 0 0 '
  + '0-2-2zm0 16H8V7h11v14z"/></svg>';

function legacyCopy(text) {
  // Off-screen, read-only (no phone keyboard), 12pt (no iOS zoom); in the document, not a shadow root.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.cssText = "position:fixed;top:0;left:-9999px;opacity:0;font-size:12pt";
  const focused = document.activeElement;
  document.body.appendChild(area);
  area.select();
  area.setSelectionRange(0, text.length);
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  area.remove();
  if (focused && focused.focus) focused.focus();
  return ok;
}

export default function ({ data, parentElement }) {
  const button = parentElement.querySelector(".copy");
  const status = parentElement.querySelector(".status");
  const manual = parentElement.querySelector(".manual");
  button.innerHTML = ICON + "<span></span>";
  button.lastChild.textContent = data.label;
  button.onclick = () => {
    const done = (ok) => {
      manual.hidden = ok;
      status.textContent = ok ? data.copied : data.manual;
      if (!ok) { manual.value = data.text; manual.focus(); manual.select(); }
    };
    if (window.isSecureContext && navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(data.text).then(() => done(true), () => done(legacyCopy(data.text)));
    } else {
      done(legacyCopy(data.text));  // still inside the click: browsers allow execCommand('copy') here
    }
  };
}
"""

_component = st.components.v2.component("edgechat_copy", html=HTML, css=CSS, js=JS)


def copy_button(content: str, key: str, lang: str) -> None:
    """A Copy button for one answer's raw Markdown."""
    data = {"text": content, "label": t(lang, "copy"), "copied": t(lang, "copied"), "manual": t(lang, "copy_manual")}
    _component(key=key, data=data, width="content")
