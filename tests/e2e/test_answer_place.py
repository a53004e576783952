"""An answer is drawn once (issue 30): the answer being written sits where the finished answer goes,
above the context meter, so the page never shows it twice and the meter never jumps; Regenerate
clicked the moment an answer ends starts a new answer every time, on slowed script runs too.

What the page showed is recorded in the page itself (a MutationObserver sees every DOM state React
commits, however short); whether a click reached the model is read from the server's /metrics, not
from a Stop button that may be on the page for less than one of playwright's polls (500 ms apart)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness.servers import Server, hook_env
from tests.e2e.test_browser import ANSWER_TIMEOUT_MS, ask, messages, open_chat

LONG = "Write a long story about a dragon and a knight."  # greedy: runs to --max-new-tokens
REGENERATIONS = 3
FLAGS = ("--temperature", "0", "--max-new-tokens", "120", "--context-length", "1024")

# Every state the page commits: how many chat messages and assistant messages it holds, whether the
# context meter is below the last message, and each time a Stop button appears.
WATCH = """() => {
  const w = window.__place = {most: 0, mostAnswers: 0, meterAbove: 0, stops: 0, states: 0};
  let stopShown = false;
  const check = () => {
    w.states += 1;
    const shown = [...document.querySelectorAll('[data-testid=stChatMessage]')];
    w.most = Math.max(w.most, shown.length);
    const answers = document.querySelectorAll('[data-testid=stChatMessageAvatarAssistant]').length;
    w.mostAnswers = Math.max(w.mostAnswers, answers);
    const meter = [...document.querySelectorAll('[data-testid=stCaptionContainer]')]
      .find((caption) => caption.innerText.includes('of the context before your next question'));
    const last = shown.pop();
    if (meter && last && !(last.compareDocumentPosition(meter) & Node.DOCUMENT_POSITION_FOLLOWING)) w.meterAbove += 1;
    const stop = [...document.querySelectorAll('button')].some((b) => b.innerText.includes('Stop generating'));
    if (stop && !stopShown) w.stops += 1;
    stopShown = stop;
  };
  new MutationObserver(check).observe(document.body, {childList: true, subtree: true, characterData: true});
  check();
}"""


@pytest.fixture(scope="module")
def plain() -> Iterator[Server]:
    s = Server(*FLAGS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slowed() -> Iterator[Server]:
    """Every full script run starts 1 s after its callbacks (harness/slowruns), as on a busy box: the
    answer Regenerate starts in its callback is often over before the page's run draws it."""
    s = Server(*FLAGS, env=hook_env("slowruns", EDGECHAT_SLOW_RUN_S="1"))
    yield s
    s.stop()


def page_answers(server: Server) -> int:
    """Answers the page's people got to the end, as the server counts them."""
    return int(
        sum(server.metric("edgechat:requests_total", finished_reason=r, source="page") or 0 for r in ("stop", "length"))
    )


def answered(page, server: Server, count: int) -> None:  # noqa: ANN001
    """The server finished its `count`-th page answer and the page shows it finished: two messages,
    the stats line, Regenerate."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    while page_answers(server) < count:
        assert time.monotonic() < deadline, f"the server finished {page_answers(server)} answers, not {count}"
        time.sleep(0.2)
    page.get_by_role("button", name="Regenerate").wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.get_by_test_id("stChatMessage").nth(1).get_by_text("tok/s").wait_for(timeout=ANSWER_TIMEOUT_MS)


def watched(page) -> dict:  # noqa: ANN001
    return page.evaluate("() => window.__place")


def drawn_once_and_regenerated(browser, server: Server, stop_seen: bool) -> None:  # noqa: ANN001
    context, page = open_chat(browser, server)
    page.evaluate(WATCH)
    before = page_answers(server)
    ask(page, LONG)
    if stop_seen:  # while it is written: under its question, above the meter
        page.get_by_role("button", name="Stop generating").wait_for(timeout=ANSWER_TIMEOUT_MS)
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=stChatMessage]')[1]?.innerText.length > 40",
            timeout=ANSWER_TIMEOUT_MS,
        )
        assert len(messages(page)) == 2
    answered(page, server, before + 1)
    first = messages(page)[1].split("\n")[0]
    for n in range(2, REGENERATIONS + 2):
        page.get_by_role("button", name="Regenerate").click()  # the moment the answer is drawn finished
        answered(page, server, before + n)
        assert page_answers(server) == before + n, "one click, one answer"
        shown = messages(page)
        assert len(shown) == 2 and shown[1].split("\n")[0] == first, shown  # greedy: the same answer again
    seen = watched(page)
    assert seen["states"] > 20, seen  # the observer did watch the answers being written
    assert seen["most"] == 2 and seen["mostAnswers"] == 1, f"an answer was on the page twice: {seen}"
    assert seen["meterAbove"] == 0, f"the context meter was above the last message: {seen}"
    if stop_seen:
        assert seen["stops"] >= 1, seen
    context.close()


def test_an_answer_is_drawn_once_and_regenerate_works_right_after_it_ends(browser, plain: Server) -> None:  # noqa: ANN001
    drawn_once_and_regenerated(browser, plain, stop_seen=True)


def test_the_same_on_slowed_script_runs(browser, slowed: Server) -> None:  # noqa: ANN001
    drawn_once_and_regenerated(browser, slowed, stop_seen=False)
