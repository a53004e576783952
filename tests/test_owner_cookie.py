"""OwnerCookieMiddleware at the ASGI level: when it sets the cookie, with which attributes, and
what it leaves alone. tests/e2e/test_owner_browser.py shows the same in a real browser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgechat.owner import (
    COOKIE_NAME,
    Owner,
    OwnerCookieMiddleware,
    is_owner_token,
    local_owner,
    new_owner_token,
    owner_from_cookies,
)


async def _page(scope, receive, send) -> None:  # noqa: ANN001
    """The app behind the middleware: any page."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"page"})


def set_cookies(
    scheme: str = "http", headers: list[tuple[bytes, bytes]] | None = None, path: str = "/", **options: object
) -> list[str]:
    """The Set-Cookie headers the middleware adds to one response."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "scheme": scheme, "method": "GET", "path": path, "headers": headers or []}
    asyncio.run(OwnerCookieMiddleware(_page, **options)(scope, receive, send))
    assert sent[1]["body"] == b"page"
    return [v.decode("latin-1") for k, v in sent[0]["headers"] if k == b"set-cookie"]


def test_a_request_without_the_cookie_gets_a_fresh_one() -> None:
    (first,) = set_cookies()
    (second,) = set_cookies()
    name, _, rest = first.partition("=")
    token, *attributes = rest.split("; ")
    assert name == COOKIE_NAME and is_owner_token(token) and token not in second
    assert sorted(attributes) == ["HttpOnly", "Max-Age=34560000", "Path=/", "SameSite=Strict"]
    (secure,) = set_cookies("https")
    assert secure.endswith("; Secure")


@pytest.mark.parametrize(
    "cookie",
    [b"edgechat_owner=forged", b"edgechat_owner=" + b"A" * 44, b"other=1", b"", b'edgechat_owner="; x', b"\xff\xfe"],
)
def test_a_missing_or_malformed_cookie_is_replaced(cookie: bytes) -> None:
    (header,) = set_cookies(headers=[(b"cookie", cookie)])
    assert is_owner_token(header.split(";")[0].split("=", 1)[1])


def test_a_valid_cookie_is_left_alone_among_others() -> None:
    token = new_owner_token()
    cookie = f'_ga=GA1.1; odd="quoted; value"; {COOKIE_NAME}={token}; _streamlit_xsrf=2|x'.encode()
    assert set_cookies(headers=[(b"cookie", cookie)]) == []
    assert set_cookies(headers=[(b"cookie", b"a=1"), (b"cookie", f"{COOKIE_NAME}={token}".encode())]) == []


def test_a_request_another_site_started_is_left_alone() -> None:
    """SameSite=Strict keeps the cookie off such requests: a new one would replace the real one."""
    assert set_cookies(headers=[(b"sec-fetch-site", b"cross-site")]) == []
    assert len(set_cookies(headers=[(b"sec-fetch-site", b"same-origin")])) == 1
    assert len(set_cookies(headers=[(b"sec-fetch-site", b"none")])) == 1  # typed, bookmarked


def test_paths_that_programs_call_can_be_left_alone() -> None:
    skip = {"skip_prefixes": ("/v1/", "/metrics")}
    assert set_cookies(path="/v1/chat/completions", **skip) == set_cookies(path="/metrics", **skip) == []
    assert len(set_cookies(path="/", **skip)) == 1


def test_websockets_pass_through_untouched() -> None:
    seen: list[dict] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        seen.append(scope)
        await send({"type": "websocket.accept"})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "websocket", "headers": []}
    asyncio.run(OwnerCookieMiddleware(app)(scope, None, send))
    assert seen == [scope] and sent == [{"type": "websocket.accept"}]


def test_the_script_side_reads_only_a_well_formed_token() -> None:
    token = new_owner_token()
    assert owner_from_cookies({COOKIE_NAME: token}) == Owner.from_token(token)
    assert owner_from_cookies({COOKIE_NAME: "forged"}) is None
    assert owner_from_cookies({}) is None


def test_the_terminal_keeps_its_owner_in_a_private_file(tmp_path: Path) -> None:
    first = local_owner(tmp_path / "data")
    assert local_owner(tmp_path / "data") == first
    path = tmp_path / "data" / "terminal-owner"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and Owner.from_token(path.read_text().strip()) == first
