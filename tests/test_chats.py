"""A conversation's saved copy in a real SQLite file: what is written when, and what survives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgechat.chats import SavedChat
from edgechat.clients import conversation_for
from edgechat.config import parse_settings
from edgechat.conversation import Conversation
from edgechat.owner import Owner, new_owner_token
from edgechat.runtime import Runtime
from edgechat.store import Store, open_store
from tests.conftest import GREEDY

WAIT_S = 120


def saved_conversation(runtime: Runtime, store: Store) -> tuple[Conversation, SavedChat, Owner]:
    owner = Owner.from_token(new_owner_token())
    conv = conversation_for(runtime, parse_settings([], env={}))
    conv.sampling = GREEDY
    saved = SavedChat(store, owner)
    saved.attach(conv)
    return conv, saved, owner


def finish(conv: Conversation) -> None:
    assert conv.answer is not None and conv.answer.join(WAIT_S), "the answer did not end"


def stored(store: Store, owner: Owner, saved: SavedChat) -> list[dict]:
    chat = store.get(owner, saved.chat_id or "")
    assert chat is not None
    return chat.messages


def test_nothing_is_saved_until_the_first_question(runtime: Runtime, tmp_path: Path) -> None:
    store = open_store(tmp_path / "h.sqlite3")
    conv, saved, owner = saved_conversation(runtime, store)
    saved.sync(conv)
    assert saved.chat_id is None and store.list_conversations(owner) == []
    conv.ask("What is 2+2?")
    finish(conv)
    assert stored(store, owner, saved) == conv.records and conv.client.cache_key == saved.chat_id
    assert [c.title for c in store.list_conversations(owner)] == ["What is 2+2?"]


def test_regenerate_edit_and_continue_rewrite_only_the_tail(runtime: Runtime, tmp_path: Path) -> None:
    store = open_store(tmp_path / "h.sqlite3")
    conv, saved, owner = saved_conversation(runtime, store)
    conv.ask("What is 2+2?")
    finish(conv)
    conv.regenerate()
    finish(conv)
    assert stored(store, owner, saved) == conv.records and len(conv.records) == 2
    conv.edit("What is the opposite of hot?")
    finish(conv)
    assert stored(store, owner, saved) == conv.records and "cold" in conv.records[-1]["content"].lower()
    conv.sampling = replace(GREEDY, max_new_tokens=4)
    conv.ask("Write a long story about a dragon.")
    finish(conv)
    conv.continue_answer()
    finish(conv)
    assert stored(store, owner, saved) == conv.records and len(conv.records) == 4


def test_a_streaming_answer_is_saved_as_it_grows_marked_interrupted(runtime: Runtime, tmp_path: Path) -> None:
    store = open_store(tmp_path / "h.sqlite3")
    conv, saved, owner = saved_conversation(runtime, store)
    conv.sampling = replace(GREEDY, max_new_tokens=200)
    conv.ask("Write a long story about a dragon.")
    assert conv.answer is not None and conv.answer.wait(40, WAIT_S)
    saved.sync(conv)  # what the answer thread does at least once a second
    mid = stored(store, owner, saved)[-1]
    assert mid["interrupted"] and len(mid["content"]) >= 40  # a crash now would leave it so
    conv.stop()
    finish(conv)
    final = stored(store, owner, saved)[-1]
    assert final == conv.records[-1] and final["stopped"] and not final.get("interrupted")


def test_a_store_that_breaks_turns_history_off_and_the_chat_goes_on(runtime: Runtime, tmp_path: Path) -> None:
    store = open_store(tmp_path / "h.sqlite3")
    conv, saved, owner = saved_conversation(runtime, store)
    conv.ask("What is 2+2?")
    finish(conv)
    store.close()  # the file is gone from under the page
    conv.ask("What is 3+3?")
    finish(conv)
    assert saved.failure and "6" in conv.records[-1]["content"]
