"""Saved chats on a real SQLite file (edgechat/store.py): a chat saved question by question and
streamed, its flags, one owner's chats out of another's reach, regenerate and edit, rename, delete,
undo, purge and retention; the owner token kept only as its hash; the default data folder."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from edgechat.owner import Owner, new_owner_token
from edgechat.store import UNDO_S, ChatNotFound, Store, StoreUnavailable, default_data_dir, open_store
from tests.store_fixtures import (
    Clock,
    clock_fixture,  # noqa: F401 — the `clock` fixture
    db_fixture,  # noqa: F401 — the `db` fixture
    owner,
    store_fixture,  # noqa: F401 — the `store` fixture
)


def test_a_chat_is_saved_question_by_question_and_read_back_after_reopening(db: Path, clock: Clock) -> None:
    token, me = owner()
    store = open_store(db, clock=clock)
    chat = store.create_conversation(me, {"system": "Be brief.", "sampling": {"temperature": 0.2}})
    assert store.append_message(me, chat, "user", "What is 2+2?\nAnswer in words.") == 0
    clock.now += 1
    pos = store.append_message(me, chat, "assistant", "", streaming=True)
    store.update_message(me, chat, pos, "Fo")
    assert store.get(me, chat).messages[1] == {"role": "assistant", "content": "Fo", "interrupted": True}
    store.update_message(me, chat, pos, "Four.", final=True, stats={"completion_tokens": 2}, trimmed=1)
    store.close()

    again = open_store(db, clock=clock)
    saved = again.get(me, chat)
    assert saved.title == "What is 2+2? Answer in words."
    assert saved.settings == {"system": "Be brief.", "sampling": {"temperature": 0.2}}
    assert saved.messages == [
        {"role": "user", "content": "What is 2+2?\nAnswer in words."},
        {"role": "assistant", "content": "Four.", "stats": {"completion_tokens": 2}, "trimmed": 1},
    ]
    assert saved.updated == clock.now
    assert again.set_settings(me, chat, {"system": "Be kind."})
    assert again.get(me, chat).settings == {"system": "Be kind."}
    again.close()


def test_a_stopped_or_failed_answer_keeps_its_flags(store: Store) -> None:
    _, me = owner()
    chat = store.create_conversation(me, {})
    store.append_message(me, chat, "user", "Tell a story")
    pos = store.append_message(me, chat, "assistant", "", streaming=True)
    store.update_message(me, chat, pos, "Once upon", final=True, stopped=True)
    pos = store.append_message(me, chat, "assistant", "", streaming=True)
    store.update_message(me, chat, pos, "", final=True, error="the model failed")
    assert store.get(me, chat).messages[1:] == [
        {"role": "assistant", "content": "Once upon", "stopped": True},
        {"role": "assistant", "content": "", "error": "the model failed"},
    ]
    store.update_message(me, chat, 1, "Once upon a time")  # Continue the stopped answer...
    assert store.get(me, chat).messages[1] == {
        "role": "assistant",
        "content": "Once upon a time",
        "stopped": True,
        "interrupted": True,  # ...a crash now leaves it marked as cut off
    }
    store.update_message(me, chat, 1, "Once upon a time, the end.", final=True)
    assert store.get(me, chat).messages[1] == {"role": "assistant", "content": "Once upon a time, the end."}


def test_nobody_reaches_another_owners_chats_and_a_foreign_id_reads_as_missing(store: Store, clock: Clock) -> None:
    _, alice = owner()
    _, bob = owner()
    first = store.create_conversation(alice, {})
    store.append_message(alice, first, "user", "alice's first")
    clock.now += 5
    second = store.create_conversation(alice, {})
    store.append_message(alice, second, "user", "alice's second")
    bobs = store.create_conversation(bob, {})

    assert [c.id for c in store.list_conversations(alice)] == [second, first]  # newest first
    assert [c.title for c in store.list_conversations(alice)] == ["alice's second", "alice's first"]
    assert [c.id for c in store.list_conversations(bob)] == [bobs]
    missing = "A" * 16
    for chat_id in (first, missing, "../../etc/passwd", "", "x" * 10_000):
        assert store.get(bob, chat_id) is None
        assert not store.rename(bob, chat_id, "mine now")
        assert not store.set_settings(bob, chat_id, {"system": "obey bob"})
        assert not store.delete(bob, chat_id)
        assert not store.purge(bob, chat_id)
        for write in (
            lambda c=chat_id: store.append_message(bob, c, "user", "hi"),
            lambda c=chat_id: store.update_message(bob, c, 0, "overwritten"),
            lambda c=chat_id: store.replace_tail(bob, c, 0),
        ):
            with pytest.raises(ChatNotFound):
                write()
    assert store.get(alice, first).messages == [{"role": "user", "content": "alice's first"}]
    assert store.get(alice, first).title == "alice's first"


def test_regenerate_and_edit_replace_the_tail(store: Store) -> None:
    _, me = owner()
    chat = store.create_conversation(me, {})
    for role, text in [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]:
        store.append_message(me, chat, role, text)
    store.replace_tail(me, chat, 3)  # regenerate: drop the last answer
    store.replace_tail(me, chat, 2, [{"role": "user", "content": "q2 edited"}])  # edit the last question
    assert store.append_message(me, chat, "assistant", "a2'") == 3
    assert [m["content"] for m in store.get(me, chat).messages] == ["q1", "a1", "q2 edited", "a2'"]


def test_rename_delete_undo_and_purge(store: Store, clock: Clock) -> None:
    _, me = owner()
    chat = store.create_conversation(me, {})
    store.append_message(me, chat, "user", "hello")
    assert store.rename(me, chat, "  My\nchat\t<b>x</b> ")
    assert store.get(me, chat).title == "My chat <b>x</b>"  # plain text, kept as typed
    with pytest.raises(ValueError):
        store.rename(me, chat, " \n\x00 ")

    assert store.delete(me, chat)
    assert store.get(me, chat) is None and store.list_conversations(me) == []
    assert not store.rename(me, chat, "ghost")
    clock.now += UNDO_S - 1
    assert store.restore(me, chat)
    assert store.get(me, chat).messages == [{"role": "user", "content": "hello"}]

    assert store.delete(me, chat)
    clock.now += UNDO_S + 1
    assert not store.restore(me, chat)  # too late
    assert store.purge_older_than(30) == 1  # and gone from the file at the next start
    kept = store.create_conversation(me, {})
    assert store.purge(me, kept) and store.list_conversations(me) == []


def test_retention_purges_chats_not_written_for_keep_days(store: Store, clock: Clock) -> None:
    _, me = owner()
    old = store.create_conversation(me, {})
    store.append_message(me, old, "user", "long ago")
    clock.now += 20 * 86400
    recent = store.create_conversation(me, {})
    store.append_message(me, recent, "user", "lately")
    clock.now += 15 * 86400
    assert store.purge_older_than(30) == 1
    assert [c.id for c in store.list_conversations(me)] == [recent]
    with sqlite3.connect(store.path) as conn:  # its messages went with it (foreign key cascade)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    with pytest.raises(ValueError):
        store.purge_older_than(0)


def test_a_streamed_update_is_one_update_of_one_row(store: Store) -> None:
    _, me = owner()
    chat = store.create_conversation(me, {})
    store.append_message(me, chat, "user", "q")
    pos = store.append_message(me, chat, "assistant", "", streaming=True)
    statements: list[str] = []
    with store.db.connection() as conn:  # the pool is LIFO: the next call uses this connection
        conn.set_trace_callback(statements.append)
        before = conn.total_changes
    store.update_message(me, chat, pos, "partial text " * 100)
    with store.db.connection() as conn:
        conn.set_trace_callback(None)
        assert conn.total_changes - before == 1
    assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "COMMIT"]


def test_the_token_is_kept_only_as_its_hash(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token, me = owner()
    assert len(token) == 43 and token != new_owner_token()
    chat = store.create_conversation(me, {})
    store.append_message(me, chat, "user", "secret question")
    with pytest.raises(ChatNotFound) as not_found:
        store.update_message(me, chat, 7, "x")
    with pytest.raises(ValueError) as bad:
        Owner.from_token(token[:-1] + "!")
    with pytest.raises(TypeError):
        store.create_conversation(token, {})  # a raw token is refused, never stored
    store.db.close()
    with pytest.raises(StoreUnavailable) as closed:
        store.list_conversations(me)
    files = b"".join(p.read_bytes() for p in store.path.parent.iterdir())
    assert token.encode() not in files and me.key.encode() in files
    seen = [repr(me), str(me), repr(store), str(not_found.value), str(bad.value), str(closed.value), caplog.text]
    assert not any(token in text or token[:-1] in text for text in seen)
    assert me.key not in repr(me)


def test_default_data_dir_is_the_xdg_per_user_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert default_data_dir() == Path("/srv/data/edgechat")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_data_dir() == Path.home() / ".local/share/edgechat"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local/share/edgechat"
