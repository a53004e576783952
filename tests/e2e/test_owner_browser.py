"""The owner cookie in Streamlit 1.67's `st.App` mode, with a real server and Debian's chromium.

A throwaway st.App script installs OwnerCookieMiddleware and shows the owner key (the token's
hash) that its script run reads from `st.context.cookies`. What it proves: the page's first GET
passes through user middleware and gets the cookie; the websocket session's script runs see it;
a reload keeps it; another browser gets another; a link followed from another site neither
replaces it nor hides it from the script; a forged value is replaced.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

import pytest

from edgechat.owner import COOKIE_MAX_AGE_S, COOKIE_NAME, is_owner_token
from harness.servers import Server

APP = """
import streamlit as st
from starlette.middleware import Middleware
from streamlit.runtime.scriptrunner import get_script_run_ctx

from edgechat.owner import OwnerCookieMiddleware, owner_in_script

app = st.App(__file__, middleware=[Middleware(OwnerCookieMiddleware)])

if get_script_run_ctx() is not None:  # uvicorn also imports this file once, outside any session
    owner = owner_in_script()
    st.write(f"owner key: {owner.key if owner else 'none'}")
    st.session_state.runs = st.session_state.get("runs", 0) + 1
    st.write(f"run {st.session_state.runs}")
    st.button("rerun")
"""
KEY = re.compile(r"owner key: ([0-9a-f]{64}|none)")
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    script = tmp_path_factory.mktemp("owner_app") / "owner_app.py"
    script.write_text(APP)
    s = Server(script=script)
    yield s
    s.stop()


def shown_key(page) -> str:  # noqa: ANN001
    text = page.get_by_text(KEY).inner_text(timeout=WAIT_MS)
    return KEY.search(text).group(1)


def owner_cookie(context) -> dict:  # noqa: ANN001
    (cookie,) = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    return cookie


def key_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_browser_gets_one_owner_cookie_that_the_script_sees(browser, app_server: Server) -> None:  # noqa: ANN001
    first = browser.new_context()
    page = first.new_page()
    page.goto(app_server.url)
    key = shown_key(page)
    cookie = owner_cookie(first)
    assert is_owner_token(cookie["value"]) and key == key_of(cookie["value"])
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/" and not cookie["secure"]
    assert abs(cookie["expires"] - (time.time() + COOKIE_MAX_AGE_S)) < 3600

    page.get_by_role("button", name="rerun").click()  # a later script run of the same session
    page.get_by_text("run 2").wait_for(timeout=WAIT_MS)
    assert shown_key(page) == key
    page.reload()  # a new websocket session from the same browser
    page.get_by_text("run 1").wait_for(timeout=WAIT_MS)
    assert shown_key(page) == key and owner_cookie(first) == cookie

    second = browser.new_context()
    other = second.new_page()
    other.goto(app_server.url)
    other_key = shown_key(other)
    assert other_key != key and other_key == key_of(owner_cookie(second)["value"])

    tokens = [cookie["value"], owner_cookie(second)["value"]]
    assert not any(t in app_server.output() for t in tokens)
    first.close()
    second.close()


def test_a_link_from_another_site_keeps_the_owner(browser, app_server: Server) -> None:  # noqa: ANN001
    context = browser.new_context()
    page = context.new_page()
    page.goto(app_server.url)
    key = shown_key(page)
    cookie = owner_cookie(context)

    elsewhere = "http://elsewhere.test/"  # another site, served by the browser itself
    page.route(
        elsewhere, lambda route: route.fulfill(content_type="text/html", body=f'<a href="{app_server.url}/">go</a>')
    )
    page.goto(elsewhere)
    with page.expect_response(lambda r: r.url.rstrip("/") == app_server.url) as arrival:
        page.get_by_role("link", name="go").click()
    # (chromium sends Sec-Fetch-Site: cross-site here; playwright does not list Sec-Fetch-* headers)
    assert COOKIE_NAME not in arrival.value.request.all_headers().get("cookie", "")  # Strict: withheld...
    assert COOKIE_NAME not in (arrival.value.all_headers().get("set-cookie") or "")  # ...so not replaced
    page.get_by_text("run 1").wait_for(timeout=WAIT_MS)
    assert shown_key(page) == key and owner_cookie(context) == cookie  # the websocket carries it again
    context.close()


def test_a_forged_cookie_is_replaced(browser, app_server: Server) -> None:  # noqa: ANN001
    context = browser.new_context()
    context.add_cookies([{"name": COOKIE_NAME, "value": "forged-owner", "url": app_server.url}])
    page = context.new_page()
    page.goto(app_server.url)
    key = shown_key(page)
    cookie = owner_cookie(context)
    assert is_owner_token(cookie["value"]) and key == key_of(cookie["value"])
    context.close()
