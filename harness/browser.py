"""Debian's chromium as the project launches it: never `playwright install`."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

LAPTOP_VIEWPORT = {"width": 1100, "height": 800}
_people = iter(range(1, 1 << 16))


def person_options(n: int | None = None) -> dict:
    """Options for `browser.new_context(**person_options())`: one person in the room, on a laptop of their
    own. Every browser here runs on 127.0.0.1, so each gets its own client address through
    X-Forwarded-For, which a Server started by harness trusts from 127.0.0.1 (--trusted-proxy):
    per-address limits then see a room, not one machine."""
    n = next(_people) if n is None else n
    return {
        "viewport": LAPTOP_VIEWPORT,
        "extra_http_headers": {"X-Forwarded-For": f"10.77.{n // 250}.{n % 250 + 1}"},
    }
