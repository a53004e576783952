"""The page through Streamlit's AppTest: real model, one shared runtime, per-session state."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from edgechat.ui_text import t
from tests.apptest import answers, ask, open_page, transcript

ARGV = ["--temperature", "0", "--max-new-tokens", "48", "--context-length", "1024", "--max-sessions", "4"]


def page(**options: object) -> AppTest:
    return open_page(**options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["web_demo.py", *ARGV])


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
    assert at.session_state.conversation.client.last_stats.reused_tokens > 0  # the first turn's cache was kept


def test_new_chat_clears_the_history() -> None:
    at = ask(page(), "What is 2+2?")
    at.sidebar.button[0].click().run()
    assert transcript(at) == []


def test_blank_input_is_ignored_with_a_hint() -> None:
    at = ask(page(), "   ")
    assert transcript(at) == [] and "empty input is ignored" in at.info[0].value


# ---- controls ----


def test_regenerate_replaces_the_last_answer() -> None:
    at = ask(page(), "What is 2+2?")
    at.button(key="regenerate").click().run()
    assert not at.exception, at.exception
    msgs = transcript(at)
    assert [r for r, _ in msgs] == ["user", "assistant"] and "4" in msgs[1][1]
    assert at.session_state.conversation.client.last_stats.completion_tokens > 0  # it was generated again


def test_edit_and_resend_replaces_the_last_question() -> None:
    at = ask(page(), "What is 2+2?")
    at.button(key="edit").click().run()
    at.text_area(key="edit_text").set_value("What is the opposite of hot?")
    next(b for b in at.button if b.label == "Resend").click().run()
    assert not at.exception, at.exception
    msgs = transcript(at)
    assert [m for m in msgs if m[0] == "user"] == [("user", "What is the opposite of hot?")]
    assert "cold" in msgs[1][1].lower()


def test_cancel_edit_keeps_the_chat() -> None:
    at = ask(page(), "What is 2+2?")
    before = transcript(at)
    at.button(key="edit").click().run()
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert transcript(at) == before and [a.key for a in at.text_area] == ["system"]  # the edit box is gone


def test_settings_of_one_session_never_affect_another() -> None:
    a, b = page(), page()
    a.sidebar.number_input(key="max_new_tokens").set_value(3)
    a.sidebar.slider(key="temperature").set_value(1.5)
    a.sidebar.text_area(key="system").set_value("You are a pirate.")
    a.run()
    question = "What color is the sky on a clear day?"
    ask(a, question)
    ask(b, question)
    assert any(c.value.endswith("3 tokens · stopped at the length limit") for c in a.caption)  # A's cap
    assert "blue" in answers(b)[0].lower() and b.session_state.conversation.client.last_stats.completion_tokens > 3
    assert b.sidebar.number_input(key="max_new_tokens").value == 48
    assert b.sidebar.slider(key="temperature").value == 0.0 and b.sidebar.text_area(key="system").value == ""
    assert a.session_state.conversation.system == "You are a pirate." and b.session_state.conversation.system == ""


def test_language_switch_is_per_session() -> None:
    zh, en = page(), page()
    zh.sidebar.radio(key="lang").set_value("zh").run()
    assert zh.chat_input[0].placeholder == "输入你的问题" and zh.sidebar.button[0].label == "新对话"
    ask(zh, "What is 2+2?")
    assert any("个 token" in c.value and "首字" in c.value for c in zh.caption)
    en.run()
    assert en.chat_input[0].placeholder == "Ask a question" and en.sidebar.button[0].label == "New chat"


def test_lang_flag_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_LANG", "zh")
    assert page().chat_input[0].placeholder == "输入你的问题"


def test_password_is_asked_before_any_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_PASSWORD", "open sesame")
    at = page()
    assert not at.chat_input and not at.chat_message and at.subheader[0].value == "This chat needs a password"
    at.text_input(key="password_input").set_value("open sesam")
    at.button[0].click().run()
    assert at.error[0].value == "Wrong password." and not at.chat_input
    at.text_input(key="password_input").set_value("open sesame")
    at.button[0].click().run()
    assert at.chat_input and "What is 2+2?" in transcript(ask(at, "What is 2+2?"))[0][1]


def test_password_attempts_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_PASSWORD", "open sesame")
    at = page()
    for _ in range(5):
        at.text_input(key="password_input").set_value("guess")
        at.button[0].click().run()
        assert at.error[0].value == "Wrong password."
    at.text_input(key="password_input").set_value("open sesame")  # right, but too late
    at.button[0].click().run()
    assert at.error[0].value.startswith("Too many attempts: try again in") and not at.chat_input


def test_password_guesses_count_per_address_not_per_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_PASSWORD", "open sesame")
    guesser = [page(address="10.8.0.1") for _ in range(6)]  # a script opening session after session
    for at in guesser[:5]:
        at.text_input(key="password_input").set_value("guess")
        at.button[0].click().run()
        assert at.error[0].value == "Wrong password."
    late = guesser[5]
    late.text_input(key="password_input").set_value("open sesame")
    late.button[0].click().run()
    assert late.error[0].value.startswith("Too many attempts") and not late.chat_input
    neighbour = page(address="10.8.0.2")  # somebody else in the room is not locked out
    neighbour.text_input(key="password_input").set_value("open sesame")
    neighbour.button[0].click().run()
    assert neighbour.chat_input


def test_input_length_cap_holds_in_the_widget_and_on_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_MAX_INPUT_CHARS", "20")
    at = page()
    assert at.chat_input[0].proto.max_chars == 20  # the browser cannot type more
    conversation = at.session_state.conversation
    refusal = conversation.ask("x" * 21)  # what a crafted websocket message would bring
    assert refusal is not None and conversation.records == []
    assert t("en", refusal.key, **refusal.fields) == (
        "Your message is 21 characters; this server accepts up to 20. Shorten it and send again."
    )


def test_rate_limit_per_address_across_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECHAT_RATE_LIMIT", "2")
    at, same_laptop, other = page(address="10.9.0.1"), page(address="10.9.0.1"), page(address="10.9.0.2")
    at.sidebar.number_input(key="max_new_tokens").set_value(2).run()
    ask(at, "Hi")
    ask(at, "Hello")
    ask(at, "Hey")
    assert [u for r, u in transcript(at) if r == "user"] == ["Hi", "Hello"]
    assert at.warning[0].value.startswith("Too many requests: up to 2 a minute per person. Try again in")
    assert transcript(ask(same_laptop, "Hi")) == []  # a new tab (or a reload) is the same person
    assert same_laptop.warning[0].value.startswith("Too many requests")
    assert transcript(ask(other, "What is 2+2?"))[0] == ("user", "What is 2+2?")  # others go on


def test_trimmed_history_is_announced() -> None:
    at = page()
    at.sidebar.number_input(key="max_new_tokens").set_value(4).run()
    ask(at, "apple " * 520)
    assert not at.info  # the first turn fits
    ask(at, "pear " * 520)
    notices = [i.value for i in at.info]
    assert notices == ["2 earlier messages were left out so this conversation fits the model's context of 1024 tokens."]


def test_model_output_is_markdown_never_html() -> None:
    at = page()
    at.session_state.conversation.records = [
        {"role": "user", "content": "show me"},
        {"role": "assistant", "content": "<b>bold?</b> $x^2$ ![pixel](http://tracker.example/p.png)"},
    ]
    at.run()
    shown = at.chat_message[1].markdown[0]
    assert not shown.allow_html
    assert shown.value == "\\<b>bold?\\</b> $x^2$ [image: pixel](<http://tracker.example/p.png>)"


def test_export_buttons_appear_once_there_is_a_chat() -> None:
    at = page()
    assert [(d.label, d.disabled) for d in at.sidebar.download_button] == [("Markdown", True), ("JSON", True)]
    ask(at, "What is 2+2?")
    assert [(d.label, d.disabled) for d in at.sidebar.download_button] == [("Markdown", False), ("JSON", False)]


def test_server_panel_shows_the_model_and_load() -> None:
    at = page()
    panel = [c.value for c in at.sidebar.caption]
    assert "model file SmolLM2-135M-Instruct.Q4_1.gguf" in panel
    assert any("context 1024 tokens" in c for c in panel)
    load = [h.proto.body for h in at.sidebar.get("html")]
    assert len(load) == 1 and re.search(r">generating 0 · waiting 0 · [\d.]+ tok/s</p>", load[0])
    assert 'data-edgechat-load="generating {running} · waiting {waiting} · {tps} tok/s"' in load[0]


def test_server_panel_shows_the_lan_address_to_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamlit.net_util.get_internal_ip", lambda: "10.1.2.3")
    assert "Others on the LAN open http://10.1.2.3:8501" in [c.value for c in page().sidebar.caption]


def test_a_dead_engine_is_rebuilt_without_restarting_the_server() -> None:
    at = ask(page(), "What is 2+2?")
    other = page()
    old = at.session_state.conversation.client.backend
    old.scheduler.failure = "simulated scheduler death"  # what the worker records when its thread dies
    ask(at, "What is 3+3?")
    new = at.session_state.conversation.client.backend
    assert new is not old and new.alive and new.stats().alive
    assert [r for r, _ in transcript(at)] == ["user", "assistant", "user", "assistant"]
    assert "6" in transcript(at)[3][1]
    ask(other, "What is 2+2?")  # another session moves to the new runtime too
    assert other.session_state.conversation.client.backend is new and "4" in transcript(other)[1][1]


def test_the_handout_is_shown_folded_at_the_top_and_read_by_every_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    sheet = tmp_path / "handout.md"
    sheet.write_text("# Today\n\nWe bake bread with **rye** flour.\n", encoding="utf-8")
    monkeypatch.setattr("sys.argv", ["web_demo.py", *ARGV, "--handout", str(sheet)])
    at = ask(page(), "What flour do we use today?")
    box = [e for e in at.expander if e.label == t("en", "handout")]
    assert len(box) == 1 and "rye" in box[0].markdown[0].value
    client = at.session_state.conversation.client
    assert client.handout == sheet.read_text(encoding="utf-8").strip()
    assert client.last_stats.prompt_tokens == len(client.prompt_ids("What flour do we use today?"))  # handout in it
