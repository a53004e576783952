"""The page as a phone on the LAN sees it: `http://lan.test:PORT`, which chromium resolves to
127.0.0.1 (--host-resolver-rules) and which is NOT a secure context, so browsers give it no
clipboard API. The server names itself lan.test (Streamlit's browser.serverAddress), allows that
host (--allowed-hosts), and runs --show-qr and one answer at a time (--max-running 1).

- the QR codes (the presenter's large one and the server panel's) decode to the page's address;
- Copy still gets the exact Markdown to the clipboard (execCommand on the click), and when a
  browser refuses even that, shows it selected to copy by hand;
- the tab title says queued / answering, and answered when the tab was in the background.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from harness.browser import CHROMIUM, CHROMIUM_ARGS, person_options
from harness.servers import Server
from tests.e2e.conftest import require_chromium
from tests.e2e.test_browser import ANSWER_TIMEOUT_MS, ask, wait_answered

HOST = "lan.test"
LONG = "Write a long story about a dragon and a knight."  # greedy: runs to --max-new-tokens


@pytest.fixture(scope="module")
def lan_browser():  # noqa: ANN201
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM),
                               args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"])  # fmt: skip
        yield b
        b.close()


@pytest.fixture(scope="module")
def lan() -> Iterator[Server]:
    s = Server(
        "--temperature", "0", "--max-new-tokens", "600", "--context-length", "1024", "--max-running", "1",
        "--time-slice", "0",  # first come, first served: the second person waits until Stop
        "--show-qr", "--allowed-hosts", f"{HOST},127.0.0.1",
        streamlit_options=("--browser.serverAddress", HOST),
    )  # fmt: skip
    yield s
    s.stop()


def lan_url(server: Server) -> str:
    return f"http://{HOST}:{server.port}"


def open_page(lan_browser, server: Server):  # noqa: ANN001, ANN201
    context = lan_browser.new_context(**person_options())
    page = context.new_page()
    page.goto(lan_url(server))
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    return context, page


def decoded(locator) -> list[str]:  # noqa: ANN001
    """What a phone's camera would read from this element as drawn on the screen."""
    image = Image.open(io.BytesIO(locator.screenshot()))
    return [code.text for code in zxingcpp.read_barcodes(image)]


def test_qr_codes_decode_to_the_page_address(lan_browser, lan: Server) -> None:  # noqa: ANN001
    context, page = open_page(lan_browser, lan)
    assert page.evaluate("window.isSecureContext") is False
    url = lan_url(lan)
    presenter = page.locator(".st-key-presenter_qr")
    presenter.get_by_test_id("stImage").locator("img").wait_for(timeout=30_000)
    assert decoded(presenter.get_by_test_id("stImage").locator("img")) == [url]
    assert presenter.get_by_test_id("stImage").locator("img").bounding_box()["width"] >= 300  # across a room
    sidebar = page.get_by_test_id("stSidebarContent")
    sidebar.get_by_text(f"Others on the LAN open {url}").wait_for(timeout=30_000)
    assert decoded(sidebar.get_by_test_id("stImage").locator("img")) == [url]
    page.get_by_role("button", name="Close QR code").click()
    presenter.wait_for(state="detached", timeout=30_000)
    ask(page, "What is 2+2?")  # later runs keep it closed
    wait_answered(page, 1)
    assert presenter.count() == 0
    sidebar.get_by_role("button", name="Show QR code large").click()
    presenter.get_by_test_id("stImage").wait_for(timeout=30_000)
    context.close()


def last_answer_markdown(page) -> str:  # noqa: ANN001
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON").click()
    return json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["messages"][-1]["content"]


COPY_SPY = """() => { window.__copied = [];
  document.addEventListener('copy', (e) => { const t = e.target; window.__copied.push(
    t.value !== undefined ? t.value.slice(t.selectionStart, t.selectionEnd) : String(getSelection()));
  }, true); }"""


def test_copy_on_an_insecure_origin(lan_browser, lan: Server) -> None:  # noqa: ANN001
    context, page = open_page(lan_browser, lan)
    assert page.evaluate("typeof navigator.clipboard") == "undefined"  # what a phone gets over plain HTTP
    page.get_by_role("button", name="Close QR code").click()
    ask(page, "Write a haiku about the sea, then a Python line that prints it.")
    wait_answered(page, 1)
    markdown = last_answer_markdown(page)
    answer = page.get_by_test_id("stChatMessage").nth(1)
    page.evaluate(COPY_SPY)
    answer.get_by_role("button", name="Copy").click()
    answer.get_by_text("Copied", exact=True).wait_for(timeout=10_000)
    assert page.evaluate("window.__copied") == [markdown]  # the copy that execCommand made, during the click
    # ...and it is what the clipboard now holds: read back on a secure origin of the same browser
    reader = context.new_page()
    reader.goto(lan.url + "/healthz")  # 127.0.0.1: a secure context, with the clipboard API
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lan.url)
    assert reader.evaluate("navigator.clipboard.readText()") == markdown
    reader.close()

    page.evaluate("() => { document.execCommand = () => false; }")  # a browser that refuses even that
    answer.get_by_role("button", name="Copy").click()
    answer.get_by_text("copy it by hand").wait_for(timeout=10_000)
    manual = answer.locator("textarea")
    assert manual.is_visible() and manual.input_value() == markdown
    assert manual.evaluate("t => [t.selectionStart, t.selectionEnd]") == [0, len(markdown)]
    context.close()


def test_tab_title_says_queued_answering_and_answered(lan_browser, lan: Server) -> None:  # noqa: ANN001
    (writer_ctx, writer), (waiter_ctx, waiter) = open_page(lan_browser, lan), open_page(lan_browser, lan)
    ask(writer, LONG)
    writer.wait_for_function("document.title === '● answering · edgechat'", timeout=ANSWER_TIMEOUT_MS)
    ask(waiter, "What is 2+2?")  # one answer at a time: this one waits
    waiter.wait_for_function("document.title === '◌ queued · edgechat'", timeout=60_000)
    other_tab = waiter_ctx.new_page()  # the waiter switches tabs
    other_tab.bring_to_front()
    hidden = waiter.evaluate("document.visibilityState") == "hidden"
    if not hidden:  # a headless browser may keep every tab visible: say what a switch says
        waiter.evaluate("""() => { Object.defineProperty(document, 'hidden', {get: () => true, configurable: true});
            Object.defineProperty(document, 'visibilityState', {get: () => 'hidden', configurable: true});
            document.dispatchEvent(new Event('visibilitychange')); }""")
    # Every title the waiter's tab shows from here on: a short answer can be "answering" for less
    # than a poll, so the test reads the record instead of hoping to catch it.
    waiter.evaluate("""() => { window.titlesSeen = [];
        new MutationObserver(() => window.titlesSeen.push(document.title))
            .observe(document.head, {childList: true, characterData: true, subtree: true}); }""")
    writer.get_by_role("button", name="Stop generating").click()  # the waiter's answer starts now
    # polled on a timer: a background tab gets no animation frames
    waiter.wait_for_function("document.title === '✓ answered · edgechat'", timeout=ANSWER_TIMEOUT_MS, polling=100)
    seen = waiter.evaluate("window.titlesSeen")
    assert "● answering · edgechat" in seen, seen
    assert seen.index("● answering · edgechat") < seen.index("✓ answered · edgechat"), seen
    writer.wait_for_function("document.title === 'edgechat'", timeout=ANSWER_TIMEOUT_MS)  # watched it end
    if hidden:
        waiter.bring_to_front()
    else:
        waiter.evaluate("""() => { delete document.hidden; delete document.visibilityState;
            document.dispatchEvent(new Event('visibilitychange')); }""")
    waiter.wait_for_function("document.title === 'edgechat'", timeout=10_000)  # back: the mark goes
    writer_ctx.close()
    waiter_ctx.close()


def test_presenter_qr_fits_a_phone_and_still_decodes(lan_browser, lan: Server) -> None:  # noqa: ANN001
    from tests.e2e.test_phone import NO_SIDEWAYS_SCROLL, PHONE, on_screen

    context = lan_browser.new_context(**{**person_options(), **PHONE})
    page = context.new_page()
    page.goto(lan_url(lan))
    image = page.locator(".st-key-presenter_qr").get_by_test_id("stImage").locator("img")
    image.wait_for(timeout=60_000)
    assert on_screen(image.bounding_box()) and page.evaluate(NO_SIDEWAYS_SCROLL, "html, body, [data-testid=stMain]")
    assert decoded(image) == [lan_url(lan)]
    context.close()
