"""The sidebar: your chats (switch, rename, delete with undo, import), answer settings, the
server panel and exports."""

from __future__ import annotations

import time
from dataclasses import asdict
from html import escape
from pathlib import Path

import streamlit as st

from edgechat import export
from edgechat.chats import SavedChat
from edgechat.config import Settings, options
from edgechat.conversation import Conversation
from edgechat.page import session
from edgechat.page.join_qr import join_panel
from edgechat.records import IMPORT_MAX_CHARS
from edgechat.runtime import Runtime, shared_runtime
from edgechat.safe_markdown import display_url, plain_text
from edgechat.server import LOAD_PATH, load_figures
from edgechat.stats import BackendStats
from edgechat.store import UNDO_S, StoreUnavailable
from edgechat.ui_text import stats_line, t

# The room sees load move: every open page fetches the load line once a second (edgechat.server's
# LOAD_PATH) and writes it into its own element. Not a `run_every` fragment: that was a script run per
# page per second (the event loop's and the GIL's work, issue 13), and a fragment rerun handled as a
# page's full run ended made Streamlit start a new ScriptRunner and drop the ended run's last
# messages, leaving the page half-drawn with its input disabled (issue 23, bench/run_end_repro/).
LOAD_JS = """(() => {
  if (window.__edgechatLoad) return;
  const url = new URL("LOAD_PATH", document.baseURI);
  window.__edgechatLoad = setInterval(async () => {
    const lines = document.querySelectorAll("[data-edgechat-load]");
    if (!lines.length || document.hidden) return;
    try {
      const r = await fetch(url, {cache: "no-store"});
      if (!r.ok) return;
      const d = await r.json();
      for (const el of lines) {
        el.textContent = el.dataset.edgechatLoad.replace("{running}", d.running)
          .replace("{waiting}", d.waiting).replace("{tps}", Number(d.tps).toFixed(1));
      }
    } catch (e) {}
  }, 1000);
})();""".replace("LOAD_PATH", LOAD_PATH.lstrip("/"))
CHATS_SHOWN = 30


def server_panel(runtime: Runtime, lang: str) -> None:
    """The model, the device, the load (kept current by the page itself, see LOAD_JS). Strings from
    a model server (its model id, its health line) are shown as plain text."""
    info = runtime.info
    st.caption(f"**{plain_text(info.get('model_name', '?'))}** · {plain_text(info.get('backend', '?'))}")
    if info.get("model") and info.get("backend") != "openai":
        st.caption(t(lang, "server_model", file=plain_text(Path(str(info["model"])).name)))
    device = plain_text(display_url(str(info.get("device", "?"))))
    st.caption(t(lang, "server_device", device=device, context=info.get("context_length", "?")))
    health = runtime.backend.health()  # a remote server's cached /v1/models round trip
    if health is not None:
        st.caption(plain_text(health))
    stats = runtime.backend.stats()
    load_line(stats, lang)
    local = stats.scheduler  # None for a remote server
    room = local.room if local is not None else None
    if room is not None and room.prompt_tokens_prefilled:  # where prompt tokens came from (as of this run)
        st.caption(t(lang, "server_prompt", reused=room.prompt_tokens_reused,
                     shared=room.prompt_tokens_shared, prefilled=room.prompt_tokens_prefilled))  # fmt: skip
    if local is not None and local.chips:  # a TPU box serving on several chips: each chip's slots in use
        st.caption(
            " · ".join(t(lang, "server_chip" if c.alive else "server_chip_out", **asdict(c)) for c in local.chips)
        )


def load_line(stats: BackendStats, lang: str) -> None:
    """Answers generating and waiting, and tok/s: now, then refreshed in the browser once a second.
    Only numbers go into it (its template is this page's own string)."""
    now = t(lang, "server_load", **load_figures(stats))
    marks = {"-101": "{running}", "-202": "{waiting}", "-303.0": "{tps}"}
    template = t(lang, "server_load", running=-101, waiting=-202, tps=-303.0)
    for mark, field in marks.items():
        template = template.replace(mark, field)
    st.html(
        f'<p data-edgechat-load="{escape(template)}" style="font-size:0.875rem;opacity:0.6;margin:0">'
        f"{escape(now)}</p><script>{LOAD_JS}</script>",
        unsafe_allow_javascript=True,
    )


def chat_list(runtime: Runtime, lang: str, busy: bool) -> None:
    """Your chats, newest first: open one, rename or delete it (with undo), import an export."""
    ss = st.session_state
    saved: SavedChat | None = ss.get("saved")
    book = session.store()
    if book is None or saved is None:
        return
    st.subheader(t(lang, "your_chats"))
    if saved.failure:
        st.caption(t(lang, "history_off", reason=plain_text(saved.failure)))
    try:
        chats = book.list_conversations(ss.owner, limit=CHATS_SHOWN)
    except StoreUnavailable as err:
        st.caption(t(lang, "history_off", reason=plain_text(str(err))))
        return
    for chat in chats:
        current = chat.id == saved.chat_id
        row = st.container(horizontal=True, wrap=False, vertical_alignment="center")  # ⋮ stays beside a long title
        row.button(plain_text(chat.title or t(lang, "untitled"), max_chars=40), key=f"open_{chat.id}",
                   type="primary" if current else "tertiary", disabled=busy or current,
                   on_click=_open, args=(chat.id,), width="stretch")  # fmt: skip
        with row.popover("", icon=":material/more_vert:", disabled=busy):
            st.text_input(t(lang, "rename"), value=chat.title, key=f"title_{chat.id}", max_chars=80)
            st.button(t(lang, "rename"), key=f"rename_{chat.id}", on_click=_rename, args=(chat.id,))
            st.button(t(lang, "delete"), key=f"delete_{chat.id}", on_click=_delete, args=(chat.id,),
                      icon=":material/delete:")  # fmt: skip
    if ss.deleted_chat and time.monotonic() - ss.deleted_chat[1] < UNDO_S:
        st.button(t(lang, "undo_delete"), key="undo", on_click=_undo, icon=":material/undo:")
    with st.expander(t(lang, "import"), icon=":material/upload:"):  # pasted: uploads stay off (edgechat.server)
        st.text_area(t(lang, "import_help"), key="import_text", max_chars=IMPORT_MAX_CHARS, height=80)
        st.button(t(lang, "import_button"), key="import", on_click=_import, disabled=busy)


def _open(chat_id: str) -> None:
    session.open_chat(chat_id, shared_runtime(st.session_state.settings))


def _rename(chat_id: str) -> None:
    ss = st.session_state
    try:
        session.store().rename(ss.owner, chat_id, ss[f"title_{chat_id}"])  # type: ignore[union-attr]
    except ValueError as err:
        ss.flash.append(("warning", str(err)))


def _delete(chat_id: str) -> None:
    ss = st.session_state
    if session.store().delete(ss.owner, chat_id):  # type: ignore[union-attr]
        ss.deleted_chat = (chat_id, time.monotonic())
        if ss.saved is not None and ss.saved.chat_id == chat_id:
            session.start_new_chat(shared_runtime(ss.settings))


def _undo() -> None:
    ss = st.session_state
    if ss.deleted_chat and session.store().restore(ss.owner, ss.deleted_chat[0]):  # type: ignore[union-attr]
        _open(ss.deleted_chat[0])
    ss.deleted_chat = None


def _import() -> None:
    ss = st.session_state
    try:
        chat_id = session.store().import_json(ss.owner, ss.import_text or "")  # type: ignore[union-attr]
    except ValueError as err:
        ss.flash.append(("warning", t(ss.lang, "import_failed", reason=plain_text(str(err)))))
        return
    ss.import_text = ""
    _open(chat_id)


def answer_settings(settings: Settings, lang: str, busy: bool, sampling_fixed: bool = False) -> None:
    """Sliders from the settings' own bounds; the answer length never above the operator's flag.
    A model that cannot sample (a TPU bmodel without sample_head) says so above the sliders."""
    opts = options()
    with st.expander(t(lang, "settings"), icon=":material/tune:"):
        st.text_area(t(lang, "system"), key="system", help=t(lang, "system_help"), disabled=busy, height=80,
                     max_chars=settings.max_input_chars)  # fmt: skip
        if sampling_fixed:
            st.caption(t(lang, "sampling_fixed"))
        for key in ("temperature", "top_p", "repetition_penalty"):
            o = opts[key]
            low = o.minimum if o.minimum is not None else o.page_step  # "above 0" starts one step up
            st.slider(t(lang, key), low, o.maximum, step=o.page_step, key=key, disabled=busy)
        st.caption(t(lang, "temperature_help"))
        st.number_input(t(lang, "top_k"), 0, int(opts["top_k"].maximum or 0), step=1, key="top_k", disabled=busy)
        st.number_input(t(lang, "max_new_tokens"), 1, settings.max_new_tokens, step=16, key="max_new_tokens",
                        disabled=busy)  # fmt: skip
        st.caption(t(lang, "settings_note"))


def export_buttons(runtime: Runtime, conv: Conversation, lang: str) -> None:
    """Markdown and JSON downloads, made when clicked (not on every rerun of a long chat)."""
    model = str(runtime.info.get("model_name", "model"))
    roles = {"user": t(lang, "role_user"), "assistant": t(lang, "role_assistant")}

    def markdown() -> str:
        return export.to_markdown(conv.records, title=t(lang, "export_title", model=model), role_names=roles,
                                  caption=lambda s: stats_line(s, lang), system=conv.system or None)  # fmt: skip

    def data() -> str:
        return export.to_json(conv.records, model=model, system=conv.system or None, sampling=asdict(conv.sampling))

    row = st.container(horizontal=True)
    for label, content, ext, mime in (("Markdown", markdown, "md", "text/markdown"),
                                      ("JSON", data, "json", "application/json")):  # fmt: skip
        row.download_button(label, content, file_name=export.filename(model, ext), mime=mime, key=f"export_{ext}",
                            on_click="ignore", disabled=not conv.records, icon=":material/download:")  # fmt: skip


def sidebar(runtime: Runtime, conv: Conversation, settings: Settings, lang: str, busy: bool) -> None:
    with st.sidebar:
        st.button(t(lang, "new_chat"), key="new_chat", on_click=_new_chat, icon=":material/add:", width="stretch")
        chat_list(runtime, lang, busy)
        answer_settings(settings, lang, busy, sampling_fixed=bool(runtime.info.get("sampling_fixed")))
        st.subheader(t(lang, "server"))
        server_panel(runtime, lang)
        join_panel(lang)  # the address, its QR code and the HTTPS fingerprint: they do not change each second
        st.subheader(t(lang, "export"))
        export_buttons(runtime, conv, lang)


def _new_chat() -> None:
    ss = st.session_state
    session.start_new_chat(shared_runtime(ss.settings))
    session.apply_chat_settings({"system": ss.settings.system or "", "sampling": {}})
