"""Saved chats: conversations and messages in one SQLite file, keyed by the owner token's hash.

The page saves every question when it is sent and every answer as it streams, so a reload, a
Wi-Fi drop or a killed server loses at most the last second. Titles and contents are plain text
with length caps; nothing here interprets HTML or Markdown (the page renders safely). Chat ids
are unguessable, but ownership is what protects a chat: every query names the owner, and another
owner's chat reads exactly like a missing one. The file handling (pool, transactions,
migrations, failures as StoreUnavailable) is edgechat.store_db's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgechat import records
from edgechat.export import from_json
from edgechat.owner import Owner
from edgechat.records import Record
from edgechat.store_db import Database, Migration, open_database
from edgechat.store_db import StoreUnavailable as StoreUnavailable  # re-exported: the page catches it

DB_NAME = "history.sqlite3"
TITLE_MAX = 80  # characters: one sidebar line
UNDO_S = 600.0  # a deleted chat can be restored for this long, then it is purged
LIST_MAX = 200
_ID_RE = re.compile(r"[A-Za-z0-9_-]{16}")  # secrets.token_urlsafe(12)
_NOT_FOUND = "no such chat"  # the id is not repeated: it may be any text from a URL


def _v1(conn: sqlite3.Connection) -> None:
    """Conversations and their messages; owner is the SHA-256 of the owner token."""
    conn.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            deleted_at REAL)"""
    )
    conn.execute("CREATE INDEX conversations_by_owner ON conversations (owner, updated DESC)")
    conn.execute(
        """CREATE TABLE messages (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content TEXT NOT NULL,
            stopped INTEGER NOT NULL DEFAULT 0,
            interrupted INTEGER NOT NULL DEFAULT 0,
            stats TEXT,
            trimmed INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            UNIQUE (conversation_id, position))"""
    )


MIGRATIONS: tuple[Migration, ...] = (_v1,)


class ChatNotFound(LookupError):
    """No such chat for this owner: missing, deleted, or someone else's (never told apart)."""


@dataclass(frozen=True)
class ChatSummary:
    id: str
    title: str
    updated: float


@dataclass
class Chat:
    """A saved chat: its records (edgechat.records); a message's list index is its position."""

    id: str
    title: str
    created: float
    updated: float
    settings: dict[str, Any] = field(default_factory=dict)
    messages: list[Record] = field(default_factory=list)


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/edgechat, or ~/.local/share/edgechat (the XDG per-user data directory)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "edgechat"


def open_store(
    path: Path,
    *,
    busy_timeout_s: float = 5.0,
    pool_size: int = 4,
    clock: Callable[[], float] = time.time,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> Store:
    """Open (creating or migrating) the history file at `path`, or raise StoreUnavailable with a
    one-line reason: directory not creatable, file read-only, locked, damaged, or too new."""
    return Store(open_database(path, migrations, busy_timeout_s=busy_timeout_s, pool_size=pool_size), clock)


class Store:
    """Saved chats of many owners. Thread-safe; every method raises StoreUnavailable when the file
    cannot be used, and a chat id that is not the owner's behaves exactly like a missing one."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.path = db.path
        self.clock = clock
        self._tx = db.tx

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def close(self) -> None:
        self.db.close()

    # ---- conversations ----

    def create_conversation(self, owner: Owner, settings: Mapping[str, Any], title: str = "") -> str:
        """A new empty chat; returns its id (unguessable, safe to show in a URL)."""
        with self._tx() as conn:
            return self._create(conn, owner, settings, title)

    def _create(self, conn: sqlite3.Connection, owner: Owner, settings: Mapping[str, Any], title: str) -> str:
        chat_id, now = secrets.token_urlsafe(12), self.clock()
        conn.execute(
            "INSERT INTO conversations (id, owner, title, created, updated, settings) VALUES (?, ?, ?, ?, ?, ?)",
            (chat_id, _key(owner), clean_title(title), now, now, _json(settings, records.SETTINGS_MAX, "settings")),
        )
        return chat_id

    def list_conversations(self, owner: Owner, limit: int = LIST_MAX) -> list[ChatSummary]:
        """The owner's chats, most recently written first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT id, title, updated FROM conversations WHERE owner = ? AND deleted_at IS NULL"
                " ORDER BY updated DESC, created DESC LIMIT ?",
                (_key(owner), limit),
            ).fetchall()
        return [ChatSummary(*row) for row in rows]

    def get(self, owner: Owner, chat_id: str) -> Chat | None:
        """The chat with its messages, or None if it is not this owner's (or does not exist)."""
        if not _is_id(chat_id):
            return None
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT title, created, updated, settings FROM conversations"
                " WHERE id = ? AND owner = ? AND deleted_at IS NULL",
                (chat_id, _key(owner)),
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                "SELECT role, content, stopped, interrupted, stats, trimmed, error FROM messages"
                " WHERE conversation_id = ? ORDER BY position",
                (chat_id,),
            ).fetchall()
        return Chat(chat_id, row[0], row[1], row[2], json.loads(row[3]), [_message(r) for r in rows])

    def rename(self, owner: Owner, chat_id: str, title: str) -> bool:
        """Set the title (cleaned to one plain line, capped); False if not the owner's chat."""
        title = clean_title(title)
        if not title:
            raise ValueError("a chat title needs at least one visible character")
        return self._update_conversation(owner, chat_id, "title = ?", (title,))

    def set_settings(self, owner: Owner, chat_id: str, settings: Mapping[str, Any]) -> bool:
        """Replace the chat's settings (system prompt, sampling); False if not the owner's chat."""
        return self._update_conversation(
            owner, chat_id, "settings = ?", (_json(settings, records.SETTINGS_MAX, "settings"),)
        )

    def delete(self, owner: Owner, chat_id: str) -> bool:
        """Hide the chat; `restore` brings it back within UNDO_S seconds, then it is purged."""
        now = self.clock()
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM conversations WHERE owner = ? AND deleted_at < ?", (_key(owner), now - UNDO_S)
            )  # this owner's expired deletions go now rather than at the next start
            if not _is_id(chat_id):
                return False
            cur = conn.execute(
                "UPDATE conversations SET deleted_at = ? WHERE id = ? AND owner = ? AND deleted_at IS NULL",
                (now, chat_id, _key(owner)),
            )
        return cur.rowcount == 1

    def restore(self, owner: Owner, chat_id: str) -> bool:
        """Undo a delete made less than UNDO_S seconds ago."""
        if not _is_id(chat_id):
            return False
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE conversations SET deleted_at = NULL WHERE id = ? AND owner = ? AND deleted_at >= ?",
                (chat_id, _key(owner), self.clock() - UNDO_S),
            )
        return cur.rowcount == 1

    def purge(self, owner: Owner, chat_id: str) -> bool:
        """Delete the chat and its messages for good, now (deleted or not)."""
        if not _is_id(chat_id):
            return False
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ? AND owner = ?", (chat_id, _key(owner)))
        return cur.rowcount == 1

    def purge_older_than(self, days: float) -> int:
        """At start (`--keep-days`): delete every owner's chats not written for `days` days, and
        deletions past their undo time. Returns how many chats went."""
        if days <= 0:
            raise ValueError("days must be positive")
        now = self.clock()
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM conversations WHERE updated < ? OR deleted_at < ?", (now - days * 86400, now - UNDO_S)
            )
        return cur.rowcount

    def _update_conversation(self, owner: Owner, chat_id: str, assignment: str, values: tuple[Any, ...]) -> bool:
        if not _is_id(chat_id):
            return False
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE conversations SET {assignment} WHERE id = ? AND owner = ? AND deleted_at IS NULL",
                (*values, chat_id, _key(owner)),
            )
        return cur.rowcount == 1

    # ---- messages ----

    def append_message(self, owner: Owner, chat_id: str, role: str, content: str, *, streaming: bool = False) -> int:
        """Add a message at the end and return its position. A `streaming` answer is saved marked
        interrupted until `update_message(..., final=True)`: a crash leaves it marked so. The
        chat's first question becomes its title when it has none."""
        with self._tx() as conn:
            return self._append(conn, owner, chat_id, [{"role": role, "content": content, "interrupted": streaming}])[0]

    def update_message(
        self,
        owner: Owner,
        chat_id: str,
        position: int,
        content: str,
        *,
        final: bool = False,
        stopped: bool = False,
        interrupted: bool = False,
        stats: Mapping[str, Any] | None = None,
        trimmed: int = 0,
        error: str | None = None,
    ) -> None:
        """Save a streaming answer's text so far (call it at least once a second), and once with
        `final=True` and its flags and stats. A partial save marks the answer interrupted until
        the final one, so Continue on a stopped answer that then crashes shows as interrupted; a
        final save with `interrupted` says the page went away mid-answer (Continue goes on).
        One UPDATE of one row: it rewrites that message's text, so its cost grows with the
        answer's length, not with the chat's."""
        records.text(content, f"message {position + 1} content", records.CONTENT_MAX)
        if final:
            flags = {"stopped": stopped, "interrupted": interrupted, "stats": stats, "trimmed": trimmed, "error": error}
            sets = "content = ?, updated = ?, interrupted = ?, stopped = ?, stats = ?, trimmed = ?, error = ?"
            values: tuple[Any, ...] = (content, self.clock(), *_columns(records.extras(flags, position + 1)))
        else:
            sets, values = "content = ?, updated = ?, interrupted = 1", (content, self.clock())
        if not _is_id(chat_id):
            raise ChatNotFound(_NOT_FOUND)
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE messages SET {sets} WHERE conversation_id = ? AND position = ? AND EXISTS"
                " (SELECT 1 FROM conversations WHERE id = ? AND owner = ? AND deleted_at IS NULL)",
                (*values, chat_id, position, chat_id, _key(owner)),
            )
            if cur.rowcount != 1:
                raise ChatNotFound(_NOT_FOUND)

    def replace_tail(self, owner: Owner, chat_id: str, keep: int, messages: Sequence[Mapping[str, Any]] = ()) -> None:
        """Delete the messages at positions >= `keep`, then append `messages` (regenerate, edit)."""
        with self._tx() as conn:
            self._owned(conn, owner, chat_id)
            conn.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?", (chat_id, max(keep, 0)))
            self._append(conn, owner, chat_id, messages)

    def import_json(self, owner: Owner, text: str) -> str:
        """A new chat from an edgechat JSON export (read by `export.from_json`, the one parser of
        that format); ValueError says what is wrong, and nothing is half-imported."""
        messages, meta = from_json(text)
        settings = {"system": meta["system"], "sampling": meta["sampling"]}
        with self._tx() as conn:
            chat_id = self._create(conn, owner, settings, "")
            self._append(conn, owner, chat_id, messages)
        return chat_id

    def _owned(self, conn: sqlite3.Connection, owner: Owner, chat_id: str) -> str:
        """The chat's title, or ChatNotFound when it is not this owner's live chat."""
        row = None
        if _is_id(chat_id):
            row = conn.execute(
                "SELECT title FROM conversations WHERE id = ? AND owner = ? AND deleted_at IS NULL",
                (chat_id, _key(owner)),
            ).fetchone()
        if row is None:
            raise ChatNotFound(_NOT_FOUND)
        return row[0]

    def _append(
        self, conn: sqlite3.Connection, owner: Owner, chat_id: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        title = self._owned(conn, owner, chat_id)
        now = self.clock()
        (position,) = conn.execute(
            "SELECT coalesce(max(position) + 1, 0) FROM messages WHERE conversation_id = ?", (chat_id,)
        ).fetchone()
        checked = [records.valid(m, position + 1 + i) for i, m in enumerate(messages)]  # all, before any write
        positions = []
        for m in checked:
            conn.execute(
                "INSERT INTO messages (conversation_id, position, role, content, interrupted, stopped, stats,"
                " trimmed, error, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (chat_id, position, m["role"], m["content"], *_columns(m), now, now),
            )
            if not title and m["role"] == "user":
                title = clean_title(m["content"])
                conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, chat_id))
            positions.append(position)
            position += 1
        conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, chat_id))
        return positions


def clean_title(text: str) -> str:
    """One plain line for the chat list: control and format characters (newlines, bidi overrides)
    become spaces or go, runs of spaces collapse, and it is cut at TITLE_MAX characters with "…"."""
    out = []
    for ch in text[: TITLE_MAX * 4]:
        kind = unicodedata.category(ch)
        if ch.isspace() or kind in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif kind not in ("Cf", "Cs", "Co", "Cn") or ch in "\u200c\u200d":  # keep emoji joiners
            out.append(ch)
    line = " ".join("".join(out).split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


def _key(owner: Owner) -> str:
    if not isinstance(owner, Owner):  # a raw token here would be stored or logged as is
        raise TypeError("pass an edgechat.owner.Owner, never the token")
    return owner.key


def _is_id(chat_id: object) -> bool:
    return isinstance(chat_id, str) and _ID_RE.fullmatch(chat_id) is not None


def _json(value: Mapping[str, Any] | None, cap: int, what: str) -> str:
    try:
        blob = json.dumps(dict(value or {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data: {exc}") from exc
    return records.text(blob, what, cap)


def _columns(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """A checked record's optional fields as the columns interrupted, stopped, stats, trimmed, error."""
    stats = json.dumps(fields["stats"], ensure_ascii=False) if fields.get("stats") else None
    flags = int(bool(fields.get("interrupted"))), int(bool(fields.get("stopped")))
    return (*flags, stats, int(fields.get("trimmed") or 0), fields.get("error"))


def _message(row: tuple[Any, ...]) -> Record:
    """A stored row as a record: only the fields that are set."""
    role, content, stopped, interrupted, stats, trimmed, error = row
    fields = {"stopped": bool(stopped), "interrupted": bool(interrupted), "stats": stats and json.loads(stats)}
    fields.update(trimmed=trimmed, error=error)
    return Record(role=role, content=content, **{k: v for k, v in fields.items() if v})  # type: ignore[typeddict-item]
