"""Who owns a saved chat, without accounts: an unguessable token in an HttpOnly cookie.

A browser's first request gets `edgechat_owner=<secrets.token_urlsafe(32)>`; the page's script
reads it from `st.context.cookies` (the cookies of the session's websocket handshake) and keeps
only `Owner`, the token's SHA-256. The store keys chats by that hash, so a copied database file,
a log line or a `repr` never hands out a working cookie. No salt or slow KDF: those defend
low-entropy secrets (passwords) against guessing and precomputed tables; a 256-bit random token
cannot be guessed or tabulated, and an unsalted hash keeps the lookup a plain indexed equality.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from starlette.requests import cookie_parser

COOKIE_NAME = "edgechat_owner"
COOKIE_MAX_AGE_S = 400 * 86400  # Chrome's cap on cookie lifetime
TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 base64url characters


def new_owner_token() -> str:
    """A fresh owner token: 256 random bits, URL- and cookie-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_owner_token(value: object) -> bool:
    """True for something `new_owner_token` could have made; anything else is not trusted."""
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Owner:
    """The owner of saved chats as the store sees it: the token's SHA-256, never the token."""

    key: str  # 64 hex digits

    @classmethod
    def from_token(cls, token: str) -> Owner:
        if not is_owner_token(token):
            raise ValueError("not an owner token")  # never echo the value: it may be a real cookie
        return cls(hashlib.sha256(token.encode("ascii")).hexdigest())

    def __repr__(self) -> str:
        return f"Owner({self.key[:8]}…)"


def owner_from_cookies(cookies: Mapping[str, str]) -> Owner | None:
    """The owner named by a request's cookies, or None when the cookie is missing or malformed."""
    token = cookies.get(COOKIE_NAME)
    return Owner.from_token(token) if is_owner_token(token) else None


def owner_in_script() -> Owner | None:
    """The owner of the browser behind this Streamlit script run (call it in the script thread).

    `st.context.cookies` is what the session's websocket handshake carried; it reads as empty
    outside a script run (an answer-producer thread) and while the websocket is gone, so read it
    once per session and keep the Owner in `st.session_state`.
    """
    import streamlit as st

    return owner_from_cookies(st.context.cookies)


def local_owner(data_dir: Path) -> Owner:
    """The terminal's owner: a token file (0600) beside the history, made on first use, so
    `baichuan2.py --resume ID` works across runs for whoever can read that data directory."""
    path = data_dir / "terminal-owner"
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if not is_owner_token(token):
        token = new_owner_token()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
    return Owner.from_token(token)


def set_cookie_header(token: str, *, secure: bool, max_age_s: int = COOKIE_MAX_AGE_S) -> bytes:
    """`Set-Cookie` for the owner token: HttpOnly (page scripts cannot read it), SameSite=Strict
    (never sent on requests other sites start), Path=/, Secure when the page is served over https."""
    jar: SimpleCookie = SimpleCookie()
    jar[COOKIE_NAME] = token
    morsel = jar[COOKIE_NAME]
    morsel["path"] = "/"
    morsel["max-age"] = str(max_age_s)
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if secure:
        morsel["secure"] = True
    return morsel.OutputString().encode("latin-1")


class OwnerCookieMiddleware:
    """ASGI middleware for `st.App(..., middleware=[Middleware(OwnerCookieMiddleware)])`: any HTTP
    response to a request without a valid owner cookie sets a new one.

    Requests that another site started (`Sec-Fetch-Site: cross-site`: a link followed from a chat
    app, an iframe) are left alone: the browser withholds a SameSite=Strict cookie from them, so
    "no cookie" there does not mean "new browser", and setting one would replace the person's
    token and lose their chats. The page's own same-origin requests that follow (scripts,
    `_stcore/health`, `_stcore/host-config`) set it for a browser that really has none, before the
    websocket opens. Websocket scopes pass through untouched. (Browsers too old to send
    Sec-Fetch-Site, e.g. Safari before 16.4, still get a new token after such a link.)
    """

    def __init__(self, app: Any, *, max_age_s: int = COOKIE_MAX_AGE_S, skip_prefixes: tuple[str, ...] = ()) -> None:
        """`skip_prefixes`: paths that programs call, not browsers (`/v1/`, `/metrics`): no cookie."""
        self.app = app
        self.max_age_s = max_age_s
        self.skip_prefixes = skip_prefixes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.skip_prefixes) or not _wants_cookie(scope):
            await self.app(scope, receive, send)
            return
        header = set_cookie_header(new_owner_token(), secure=scope.get("scheme") == "https", max_age_s=self.max_age_s)

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"set-cookie", header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _wants_cookie(scope: Mapping[str, Any]) -> bool:
    """No valid owner cookie, and not a request another site started."""
    cookie = ""
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"sec-fetch-site" and value == b"cross-site":
            return False
        if name == b"cookie":
            cookie = f"{cookie}; {value.decode('latin-1')}" if cookie else value.decode("latin-1")
    # Starlette's lenient parser, the one that fills `st.context.cookies`, so both sides agree.
    return owner_from_cookies(cookie_parser(cookie)) is None
