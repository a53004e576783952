"""Saved chats in the page (AppTest, real model, a real SQLite file): saved as you chat, found
again by their owner only, renamed, deleted and restored, continued, imported; and the context
meter under the input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgechat.safe_markdown import plain_text
from edgechat.ui_text import t
from tests.apptest import answers, ask, new_owner, open_page, transcript

ARGV = ["--temperature", "0", "--max-new-tokens", "24", "--context-length", "1024", "--max-sessions", "4"]


@pytest.fixture(autouse=True)
def _flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["web_demo.py", *ARGV])
    monkeypatch.setenv("EDGECHAT_DATA_DIR", str(tmp_path / "data"))


def chat_id(at) -> str:  # noqa: ANN001
    return at.session_state.saved.chat_id


def test_a_chat_is_saved_and_its_owner_finds_it_again_by_its_address() -> None:
    owner = new_owner()
    at = ask(open_page(owner=owner), "What is 2+2?")
    assert dict(at.query_params) == {"chat": chat_id(at)}  # the URL names the open chat, nothing else
    again = open_page(owner=owner, query={"chat": chat_id(at)})  # a reload, a new tab
    assert transcript(again) == transcript(at) and "4" in answers(again)[0]
    titles = [b.label for b in again.sidebar.button if b.key and b.key.startswith("open_")]
    assert titles == [plain_text("What is 2+2?")]  # labels render Markdown: titles go in as plain text


def test_another_owner_cannot_open_a_chat_even_with_its_id() -> None:
    at = ask(open_page(owner=new_owner()), "What is 2+2?")
    stranger = open_page(owner=new_owner(), query={"chat": chat_id(at)})
    assert transcript(stranger) == [] and "What is 2+2?" not in str(stranger.sidebar)
    assert stranger.warning[0].value == t("en", "chat_not_found")
    assert "chat" not in stranger.query_params


def test_switch_rename_delete_and_undo() -> None:
    owner = new_owner()
    at = ask(open_page(owner=owner), "What is 2+2?")
    first = chat_id(at)
    at.sidebar.button(key="new_chat").click().run()
    ask(at, "What color is the sky on a clear day?")
    second = chat_id(at)
    assert [b.key for b in at.sidebar.button if b.key.startswith("open_")] == [f"open_{second}", f"open_{first}"]
    at.sidebar.button(key=f"open_{first}").click().run()
    assert transcript(at)[0] == ("user", "What is 2+2?")
    at.sidebar.text_input(key=f"title_{first}").set_value("Sums <b>bold</b>")
    at.sidebar.button(key=f"rename_{first}").click().run()
    assert at.sidebar.button(key=f"open_{first}").label == plain_text("Sums <b>bold</b>")  # never HTML
    at.sidebar.button(key=f"delete_{first}").click().run()
    assert transcript(at) == [] and not any(b.key == f"open_{first}" for b in at.sidebar.button)
    at.sidebar.button(key="undo").click().run()
    assert transcript(at)[0] == ("user", "What is 2+2?") and chat_id(at) == first


def test_continue_goes_on_from_an_answer_cut_by_the_length_cap() -> None:
    owner = new_owner()
    at = open_page(owner=owner)
    at.sidebar.number_input(key="max_new_tokens").set_value(8).run()
    ask(at, "Write a long story about a dragon.")
    cut = answers(at)[0]
    assert at.button(key="continue")
    at.button(key="continue").click().run()
    assert not at.exception, at.exception
    longer = answers(at)[0]
    assert len(answers(at)) == 1 and longer.startswith(cut) and len(longer) > len(cut)
    saved = open_page(owner=owner, query={"chat": chat_id(at)})
    assert answers(saved)[0] == longer  # the continued answer was saved in place


def test_a_chat_is_imported_from_its_json_export() -> None:
    owner = new_owner()
    exported = {
        "model": "x",
        "system": "Be brief.",
        "sampling": {"temperature": 0.0},
        "messages": [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi! 👋", "interrupted": True},  # its page went away
        ],
    }
    at = open_page(owner=owner)
    at.sidebar.text_area(key="import_text").set_value(json.dumps(exported))
    at.sidebar.button(key="import").click().run()
    assert transcript(at) == [("user", "Hello there"), ("assistant", "Hi! 👋")]
    assert at.sidebar.text_area(key="system").value == "Be brief."
    assert at.button(key="continue")  # imported still interrupted: it can go on
    bad = {"messages": [{"role": "user", "content": "ok"}, {"role": "wizard", "content": 1}]}
    at.sidebar.text_area(key="import_text").set_value(json.dumps(bad))
    at.sidebar.button(key="import").click().run()
    assert at.warning[0].value.startswith("That file could not be imported: message 2: role must be")


def test_history_off_is_said_once_and_the_chat_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data folder should be")
    monkeypatch.setenv("EDGECHAT_DATA_DIR", str(blocked))
    at = open_page(owner=new_owner())
    assert at.warning[0].value.startswith("History is off:")
    ask(at, "What is 2+2?")
    assert "4" in answers(at)[0] and not at.warning  # said once; the chat goes on in memory


def test_the_context_meter_shows_what_the_next_question_starts_from() -> None:
    at = open_page()
    meter = [c.value for c in at.caption if "tokens of the context" in c.value]
    assert meter == ["used 0 / 1024 tokens of the context before your next question"]
    ask(at, "What is 2+2?")
    used = next(c.value for c in at.caption if "tokens of the context" in c.value)
    assert int(used.split()[1]) > 20
