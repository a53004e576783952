"""The page on a phone (390×844, touch): the chat, the input, Stop and the chat list fit without
sideways scrolling, and a long chat title ends in "…" with its ⋮ menu on the same line.
EDGECHAT_SCREENSHOTS=1 refreshes pics/phone.png."""

from __future__ import annotations

from harness.browser import person_options
from harness.servers import Server
from tests.e2e.conftest import save_screenshot
from tests.e2e.test_browser import ANSWER_TIMEOUT_MS, ask

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
LONG_TITLE = "Write a long story about a dragon and a knight, with the names of their towns and friends."
NO_SIDEWAYS_SCROLL = "(sel) => [...document.querySelectorAll(sel)].every(e => e.scrollWidth <= e.clientWidth)"


def on_screen(box: dict | None, width: int = 390) -> bool:
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width and box["width"] > 0


def test_phone_width_chat_stop_and_chat_list(browser, server: Server) -> None:  # noqa: ANN001
    context = browser.new_context(**{**person_options(), **PHONE})
    page = context.new_page()
    page.goto(server.url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    ask(page, LONG_TITLE)
    stop = page.get_by_role("button", name="Stop generating")
    stop.wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_function(  # a few lines of the answer are on the page
        "() => document.querySelectorAll('[data-testid=stChatMessage]')[1]?.innerText.length > 120",
        timeout=ANSWER_TIMEOUT_MS,
    )
    assert stop.is_visible() and on_screen(stop.bounding_box())
    assert on_screen(page.get_by_test_id("stChatInput").bounding_box())
    assert page.evaluate(NO_SIDEWAYS_SCROLL, "html, body, [data-testid=stMain], [data-testid=stChatMessage]")
    stop.click()
    page.get_by_role("button", name="Regenerate").wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert page.evaluate(NO_SIDEWAYS_SCROLL, "html, body, [data-testid=stMain], [data-testid=stChatMessage]")
    save_screenshot(page, "phone.png")

    page.get_by_test_id("stExpandSidebarButton").click()
    page.wait_for_function(  # it has slid in
        "() => document.querySelector('[data-testid=stSidebar]').getBoundingClientRect().left >= 0", timeout=10_000
    )
    sidebar = page.get_by_test_id("stSidebarContent")
    title = sidebar.get_by_role("button", name="Write a long story")
    title.wait_for(timeout=30_000)
    menu = sidebar.get_by_test_id("stPopoverButton").first
    t, m = title.bounding_box(), menu.bounding_box()
    assert t and m and abs((t["y"] + t["height"] / 2) - (m["y"] + m["height"] / 2)) < 4, "the ⋮ menu wrapped"
    assert m["x"] + m["width"] <= 390 and on_screen(t)
    cut = title.locator("p").evaluate("p => [getComputedStyle(p).textOverflow, p.scrollWidth > p.clientWidth]")
    assert cut == ["ellipsis", True] or title.inner_text().endswith("…")
    assert page.evaluate(NO_SIDEWAYS_SCROLL, "html, [data-testid=stSidebarContent]")
    context.close()
