"""The page through Streamlit's AppTest, as every page test drives it: one place for opening a
session, asking and reading what it shows.

AppTest cannot give a session a client address or cookies, so a test states them: `address`
(edgechat.access limits count per address) and `owner` (saved chats; None keeps history off).
"""

from __future__ import annotations

import itertools

from streamlit.testing.v1 import AppTest

from edgechat.owner import Owner, new_owner_token
from tests.conftest import REPO

_addresses = (f"10.0.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def new_owner() -> Owner:
    return Owner.from_token(new_owner_token())


def open_page(
    *, address: str | None = None, owner: Owner | None = None, query: dict[str, str] | None = None
) -> AppTest:
    """A new browser session: its own address unless given, no saved chats unless `owner`."""
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=120)
    at.session_state["address"] = address or next(_addresses)
    at.session_state["owner"] = owner
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()  # AppTest does not pass argv; the page reads sys.argv and EDGECHAT_* like flags
    assert not at.exception, at.exception
    return at


def ask(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def transcript(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, m.markdown[0].value if m.markdown else "") for m in at.chat_message]


def answers(at: AppTest) -> list[str]:
    return [text for role, text in transcript(at) if role == "assistant"]
