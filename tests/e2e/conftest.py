"""A real `streamlit run` on a free 127.0.0.1 port and Debian's chromium driven by playwright."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.servers import Server
from tests.conftest import REPO


def save_screenshot(page, name: str) -> None:  # noqa: ANN001
    """Refresh pics/NAME only when asked (EDGECHAT_SCREENSHOTS=1): a test run leaves the tree clean."""
    if os.environ.get("EDGECHAT_SCREENSHOTS"):
        page.screenshot(path=str(REPO / "pics" / name), full_page=True)


def require_chromium() -> None:
    """Skip without Debian's chromium, except where CI says the browser tests must run."""
    if not CHROMIUM.exists():
        if os.environ.get("EDGECHAT_REQUIRE_BROWSER"):
            pytest.fail("Debian chromium is required here: apt-get install chromium")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def server_fixture(*flags: str) -> Callable[[], Iterator[Server]]:
    """A module-scoped fixture: `Server(*flags)` for one test module, stopped after it. A module that
    needs other flags than the shared `server` below says `server = server_fixture(...)`."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[Server]:
        with Server(*flags) as s:
            yield s

    return fixture


server = server_fixture(
    "--temperature", "0", "--max-new-tokens", "300", "--context-length", "1024", "--max-sessions", "4"
)  # fmt: skip
