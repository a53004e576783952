"""Several people in one room: three browser contexts chat at once against one server."""

from __future__ import annotations

from harness.browser import person_options
from harness.servers import Server
from tests.e2e.conftest import save_screenshot

QUESTIONS = {
    "alice": ("What is 2+2?", "4"),
    "bob": ("What color is the sky on a clear day?", "blue"),
    "carol": ("What is the opposite of hot?", "cold"),
}
ANSWER_TIMEOUT_MS = 120_000


def open_chat(browser, server: Server):  # noqa: ANN001, ANN201
    context = browser.new_context(**person_options())
    page = context.new_page()
    page.goto(server.url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    return context, page


def ask(page, text: str) -> None:  # noqa: ANN001
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def wait_answered(page, turns: int) -> None:  # noqa: ANN001
    """The `turns`-th answer is finished and drawn: its stats caption (tok/s) is shown, and the
    page holds exactly its 2 x `turns` messages (the finished answer replaces the streamed one in
    place: test_answer_place.py)."""
    page.get_by_test_id("stChatMessage").filter(has_text="tok/s").nth(turns - 1).wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_function(
        "(n) => document.querySelectorAll('[data-testid=stChatMessage]').length === n", arg=2 * turns, timeout=60_000
    )


def messages(page) -> list[str]:  # noqa: ANN001
    return [m.inner_text() for m in page.get_by_test_id("stChatMessage").all()]


def test_three_people_chat_at_once_and_see_only_their_own_history(browser, server: Server) -> None:  # noqa: ANN001
    chats = {name: open_chat(browser, server) for name in QUESTIONS}
    for name, (question, _) in QUESTIONS.items():  # all three questions in flight together
        ask(chats[name][1], question)
    for name, (question, needle) in QUESTIONS.items():
        page = chats[name][1]
        wait_answered(page, 1)
        shown = messages(page)
        assert len(shown) == 2 and question in shown[0]
        assert needle in shown[1].lower(), shown[1]
        others = [q for other, (q, _) in QUESTIONS.items() if other != name]
        assert not any(q in text for q in others for text in shown)
    page = chats["alice"][1]
    ask(page, "What is 3+3?")
    wait_answered(page, 2)
    assert len(messages(page)) == 4
    save_screenshot(page, "web_demo.png")
    for context, _ in chats.values():
        context.close()


def test_stop_keeps_the_partial_answer(browser, server: Server) -> None:  # noqa: ANN001
    context, page = open_chat(browser, server)
    ask(page, "Write a long story about a dragon and a knight.")
    page.get_by_role("button", name="Stop generating").wait_for(timeout=60_000)
    assert page.get_by_test_id("stChatInputTextArea").is_disabled()  # one question at a time
    assistant = page.get_by_test_id("stChatMessage").nth(1)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stChatMessage]')[1]?.innerText.length > 40", timeout=60_000
    )
    page.get_by_role("button", name="Stop generating").click()
    page.get_by_text("⏹").wait_for(timeout=30_000)
    kept = assistant.inner_text()
    assert len(kept) > 20 and "⏹" in kept
    ask(page, "What is 2+2?")  # the session goes on after a stop
    page.get_by_test_id("stChatMessage").nth(3).get_by_text("tok/s").wait_for(timeout=ANSWER_TIMEOUT_MS)
    shown = messages(page)
    assert len(shown) == 4 and "tok/s" in shown[3] and "⏹" not in shown[3]
    context.close()
