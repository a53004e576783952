"""Saved chats in a real browser: a reload mid-answer, a stranger with the chat's address, a
server killed mid-answer and restarted, a network drop."""

from __future__ import annotations

import os
import signal
import time

from edgechat.ui_text import t
from harness.browser import person_options
from harness.servers import Server
from tests.e2e.conftest import save_screenshot, server_fixture
from tests.e2e.test_browser import ANSWER_TIMEOUT_MS, ask, messages, wait_answered

LONG = "Write a long story about a dragon and a knight."
FLAGS = ("--temperature", "0", "--max-new-tokens", "400", "--context-length", "1024", "--max-sessions", "4")
INTERRUPTED = t("en", "interrupted")


server = server_fixture(*FLAGS)  # its own flags: a test restarts a server with the same ones


def open_chat(browser, url: str):  # noqa: ANN001, ANN201
    context = browser.new_context(**person_options())
    page = context.new_page()
    page.goto(url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    return context, page


def answer_is_longer_than(page, chars: int) -> None:  # noqa: ANN001
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=stChatMessage]')[1]?.innerText.length > {chars}",
        timeout=ANSWER_TIMEOUT_MS,
    )


def answer_text(page) -> str:  # noqa: ANN001
    """The first answer's Markdown as shown, without avatar, notices or buttons."""
    return page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stMarkdownContainer").first.inner_text()


def continued(page, partial: int) -> None:  # noqa: ANN001
    """The continuation ran and ended: the answer is longer than `partial` characters, its
    "interrupted" notice is gone and Regenerate is back. (Not "Stop generating" seen first: a
    continuation of up to 24 tokens may end within one redraw, and a poll can miss a Stop that
    short-lived; a lost Continue click still fails here, with the notice still shown.)"""
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    while True:
        shown = messages(page)
        longer = len(answer_text(page)) > partial if len(shown) > 1 else False
        regenerate = page.get_by_role("button", name="Regenerate").is_visible()
        if longer and INTERRUPTED not in shown[1] and regenerate:
            return
        assert time.monotonic() < deadline, f"no continuation: longer {longer}, regenerate {regenerate}, {shown[1:]}"
        time.sleep(0.2)


def test_a_reload_mid_answer_keeps_what_was_written_and_continue_finishes_it(browser, server: Server) -> None:  # noqa: ANN001
    context, page = open_chat(browser, server.url)
    ask(page, LONG)
    answer_is_longer_than(page, 60)
    page.reload()
    page.get_by_text(INTERRUPTED).wait_for(timeout=60_000)
    assert "?chat=" in page.url
    partial = answer_text(page)
    assert len(partial) > 20
    page.get_by_text("Answer settings").click()  # a short continuation keeps the test quick
    tokens = page.get_by_label("Max new tokens")
    tokens.fill("24")
    tokens.press("Enter")  # the click's rerun carries every widget's value, this one included
    page.get_by_role("button", name="Continue").click()
    continued(page, len(partial))
    finished = answer_text(page)
    assert finished.startswith(partial.rstrip(" ⏹")[:20]) and len(finished) > len(partial)
    assert INTERRUPTED not in messages(page)[1]
    context.close()


def test_another_browser_cannot_see_a_chat_even_with_its_address(browser, server: Server) -> None:  # noqa: ANN001
    owner_ctx, owner = open_chat(browser, server.url)
    ask(owner, "What is 2+2?")
    wait_answered(owner, 1)
    owner.wait_for_url("**/?chat=*", timeout=30_000)
    stranger_ctx, stranger = open_chat(browser, owner.url)
    stranger.get_by_text(t("en", "chat_not_found")).wait_for(timeout=30_000)
    assert messages(stranger) == [] and "What is 2+2?" not in stranger.locator("body").inner_text()
    if os.environ.get("EDGECHAT_SCREENSHOTS"):  # README's picture of the chat list: a second chat
        owner.get_by_role("button", name=t("en", "new_chat")).click()
        owner.wait_for_function("() => !document.querySelector('[data-testid=stChatMessage]')", timeout=30_000)
        ask(owner, "Name three colors of the rainbow.")
        wait_answered(owner, 1)
        owner.get_by_text("What is 2+2?").first.wait_for(timeout=30_000)  # listed in the sidebar
        save_screenshot(owner, "chats.png")
    owner_ctx.close()
    stranger_ctx.close()


def test_a_network_drop_keeps_the_chat(browser, server: Server) -> None:  # noqa: ANN001
    context, page = open_chat(browser, server.url)
    ask(page, "What is 2+2?")
    wait_answered(page, 1)
    before = messages(page)
    context.set_offline(True)
    time.sleep(5)  # the drop itself, not a wait for something
    context.set_offline(False)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    assert messages(page)[:2] == before
    ask(page, "What is 3+3?")
    wait_answered(page, 2)
    assert len(messages(page)) == 4
    context.close()


def test_a_server_killed_mid_answer_keeps_the_chat_after_a_restart(browser) -> None:  # noqa: ANN001
    first = Server(*FLAGS)
    context = browser.new_context(**person_options())
    try:
        page = context.new_page()
        page.goto(first.url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
        ask(page, LONG)
        answer_is_longer_than(page, 80)
        time.sleep(1.5)  # the answer is saved at least once a second: let one save land
        chat = page.url.split("?chat=")[1]
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        again = Server(*FLAGS, data_dir=first.data_dir)  # same saved chats; the cookie is per host
        try:
            page.goto(f"{again.url}/?chat={chat}")
            page.get_by_text(INTERRUPTED).wait_for(timeout=60_000)
            shown = messages(page)
            assert LONG in shown[0] and len(shown[1]) > 40
        finally:
            again.stop()
    finally:
        context.close()
        first.stop()
