"""The history file's schema versions (edgechat/store.py's MIGRATIONS): a new file is private and
current, an older one is migrated keeping its chats and a backup (a failed step changes nothing),
a newer or foreign SQLite file is left alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgechat.store import DB_NAME, MIGRATIONS, StoreUnavailable, open_store
from tests.store_fixtures import (
    db_fixture,  # noqa: F401 — the `db` fixture
    owner,
)


def _v2_pinned(conn: sqlite3.Connection) -> None:
    """A test-only next version: what a real v2 step looks like."""
    conn.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")


def _v2_broken(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE no_such_table ADD COLUMN x")


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_a_new_file_is_private_and_an_empty_one_gets_the_current_schema(db: Path) -> None:
    store = open_store(db)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (db.parent, db, db.with_name(DB_NAME + "-wal"))}
    assert modes == {"data": "0o700", DB_NAME: "0o600", DB_NAME + "-wal": "0o600"}
    store.close()
    assert _user_version(db) == len(MIGRATIONS) == 1
    db.unlink()
    db.touch()  # a v0 file: empty, as a crash right after creating it leaves it
    open_store(db).close()
    assert _user_version(db) == 1


def test_an_older_file_is_migrated_keeping_its_chats_and_a_backup(db: Path) -> None:
    _, me = owner()
    v1 = open_store(db)
    chat = v1.create_conversation(me, {"system": "s"})
    v1.append_message(me, chat, "user", "kept across versions")
    v1.close()

    with pytest.raises(StoreUnavailable, match="no_such_table"):
        open_store(db, migrations=(*MIGRATIONS, _v2_broken))
    assert _user_version(db) == 1  # a failed step changes nothing
    with sqlite3.connect(db) as conn:
        assert "pinned" not in [row[1] for row in conn.execute("PRAGMA table_info(conversations)")]

    v2 = open_store(db, migrations=(*MIGRATIONS, _v2_pinned))
    assert v2.get(me, chat).messages == [{"role": "user", "content": "kept across versions"}]
    v2.close()
    assert _user_version(db) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT pinned FROM conversations").fetchall() == [(0,)]
    backup = db.with_name(f"{DB_NAME}.v1.bak")
    assert _user_version(backup) == 1
    assert open_store(backup).get(me, chat).title == "kept across versions"

    with pytest.raises(StoreUnavailable, match="newer edgechat"):
        open_store(db)  # this code knows v1 only: it never touches a v2 file
    assert _user_version(db) == 2


def test_a_foreign_sqlite_file_is_left_alone(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE photos (name TEXT)")
    before = db.read_bytes()
    with pytest.raises(StoreUnavailable, match="not an edgechat history"):
        open_store(db)
    assert db.read_bytes() == before
