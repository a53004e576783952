"""Joining the room: the page's address as text and as a QR code (people mistype addresses read
out loud), and the HTTPS certificate's fingerprint to check a browser's warning against.

The address is the one Streamlit prints (its own `server_util.get_url`, so https under --tls and
the base path are right): `browser.serverAddress` when the operator set one (a name, or a reverse
proxy's address), else the bound address, else the LAN address. The QR code is drawn by `segno`
into a PNG here; nothing leaves the box.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import segno
import streamlit as st

from edgechat.config import Settings
from edgechat.tls import fingerprint, serving_certificate
from edgechat.ui_text import t

SIDEBAR_SCALE = 4  # pixels per module: a ~150 px code in the sidebar
PRESENTER_SCALE = 16  # large enough to scan from the back of a room off a projector
PRESENTER_WIDTH = 480  # pixels on the page
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def page_url() -> str | None:
    """The address people in the room open; None when the page only listens on this machine."""
    from streamlit import config, net_util
    from streamlit.web.server import server_util

    if config.is_manually_set("browser.serverAddress"):
        return server_util.get_url(config.get_option("browser.serverAddress"))
    address = config.get_option("server.address") or ""
    if address in LOOPBACK:
        return None
    if address not in ("", "0.0.0.0", "::"):
        return server_util.get_url(address)
    ip = net_util.get_internal_ip()
    return server_util.get_url(ip) if ip else None


@lru_cache(maxsize=8)
def qr_png(url: str, scale: int) -> bytes:
    """The URL as a QR code PNG (error correction M, the standard 4-module quiet zone)."""
    out = io.BytesIO()
    segno.make(url, error="m", micro=False).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


@lru_cache(maxsize=4)
def _fingerprint(path: str) -> str:
    return fingerprint(Path(path))


def join_panel(lang: str) -> None:
    """In the sidebar's server panel: the address, its QR code, a button to show it large, and
    the certificate's fingerprint under HTTPS."""
    url = page_url()
    if url:
        st.caption(t(lang, "server_lan", url=url))
        st.image(qr_png(url, SIDEBAR_SCALE), caption=t(lang, "qr_caption", url=url), width=160)
        st.button(t(lang, "qr_show"), key="qr_show", icon=":material/qr_code_2:", type="tertiary",
                  on_click=lambda: st.session_state.update(qr_large=True))  # fmt: skip
    cert = serving_certificate()
    if cert is not None:
        st.caption(t(lang, "tls_fingerprint"))
        st.code(_fingerprint(str(cert)), language=None, wrap_lines=True)


def presenter_qr(settings: Settings, lang: str) -> None:
    """The QR code large on the main area (`--show-qr`, or the sidebar's button) until closed."""
    ss = st.session_state
    ss.setdefault("qr_large", settings.show_qr)
    url = page_url()
    if not ss.qr_large or not url:
        return
    with st.container(border=True, key="presenter_qr", horizontal_alignment="center"):
        with st.container(width=PRESENTER_WIDTH):  # at most this wide, narrower on a phone: never cut
            st.image(qr_png(url, PRESENTER_SCALE), caption=t(lang, "qr_caption", url=url), width="stretch")
        st.button(t(lang, "qr_close"), key="qr_close", icon=":material/close:",
                  on_click=lambda: ss.update(qr_large=False))  # fmt: skip
