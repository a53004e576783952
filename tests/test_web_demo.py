"""The page through Streamlit's AppTest: real model, one shared runtime, per-session state."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

ARGV = ["--temperature", "0", "--max-new-tokens", "48", "--context-length", "1024", "--max-sessions", "4"]


def page() -> AppTest:
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=120)
    at.run()  # AppTest does not pass argv; the page reads EDGECHAT_* like flags
    assert not at.exception, at.exception
    return at


@pytest.fixture(autouse=True)
def _flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["web_demo.py", *ARGV])


def ask(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def transcript(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, m.markdown[0].value if m.markdown else "") for m in at.chat_message]


def test_question_gets_an_answer_with_stats() -> None:
    at = ask(page(), "What is 2+2?")
    msgs = transcript(at)
    assert msgs[0] == ("user", "What is 2+2?")
    assert msgs[1][0] == "assistant" and "4" in msgs[1][1]
    assert any("tok/s" in c.value for c in at.caption)
    assert at.title[0].value == "SmolLM2-135M-Instruct.Q4_1"


def test_sessions_keep_their_own_history() -> None:
    a, b = page(), page()
    ask(a, "What is 2+2?")
    ask(b, "What color is the sky on a clear day?")
    assert [u for r, u in transcript(a) if r == "user"] == ["What is 2+2?"]
    assert [u for r, u in transcript(b) if r == "user"] == ["What color is the sky on a clear day?"]
    assert "blue" in transcript(b)[1][1].lower()


def test_second_turn_sees_the_first() -> None:
    at = ask(page(), "What is 2+2?")
    ask(at, "What is 3+3?")
    assert [r for r, _ in transcript(at)] == ["user", "assistant", "user", "assistant"]
    assert at.session_state.client.last_stats.reused_tokens > 0  # the first turn's cache was kept


def test_new_chat_clears_the_history() -> None:
    at = ask(page(), "What is 2+2?")
    at.sidebar.button[0].click().run()
    assert transcript(at) == []


def test_blank_input_is_ignored_with_a_hint() -> None:
    at = ask(page(), "   ")
    assert transcript(at) == [] and "empty input is ignored" in at.info[0].value
