"""One SQLite file used safely from many threads: a connection pool, transactions, migrations,
and every failure as one `StoreUnavailable(reason)`. The chats themselves are edgechat.store's.

Why these choices:
- WAL: readers never wait for the writer, and a killed process loses nothing it committed.
  `synchronous=NORMAL` with WAL survives SIGKILL; only a power cut may drop the last commits
  (with FULL every streamed update would wait for an fsync).
- A small pool of connections, not one per thread: Streamlit starts a new thread for every script
  run and for every answer, so per-thread connections would be opened per click and closed only
  when the garbage collector noticed a dead thread. A pool reuses a few connections, bounds the
  open files, and `close()` closes them all. SQLite serializes writers anyway.
- Every write is `BEGIN IMMEDIATE … COMMIT`: it takes the write lock up front, so two writers
  queue behind `busy_timeout` instead of failing on a read-to-write lock upgrade.
- Schema versions live in `PRAGMA user_version`; `migrations[i]` moves a file from version i to
  i + 1 in one transaction, after a backup copy of the older file. Nothing ever deletes the file.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

Migration = Callable[[sqlite3.Connection], None]


class StoreUnavailable(Exception):
    """History cannot be used; `reason` is one line for the page ("history is off: <reason>")."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())
        super().__init__(self.reason)


class Database:
    """Pooled connections to one SQLite file; `tx()` is the only way in."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0, pool_size: int = 4) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def _open_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )  # the pool hands a connection to one thread at a time
        try:  # WAL itself is a property of the file, set once by open_database
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection in autocommit mode; SQLite errors while opening it are mapped."""
        if self._closed:
            raise StoreUnavailable("history was closed")
        if not self._slots.acquire(timeout=self.busy_timeout_s):
            raise StoreUnavailable(f"{self.path} is busy (no free connection in {self.busy_timeout_s:g} s)")
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                try:
                    conn = self._open_connection()
                except sqlite3.Error as exc:
                    raise StoreUnavailable(self.reason(exc)) from exc
            yield conn
            if conn.in_transaction:  # left half-done by an error: never hand it on
                conn.close()
                conn = None
        finally:
            if conn is not None:
                if self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: IMMEDIATE for writes, one consistent snapshot for reads. Committed
        when the block ends, rolled back when it raises; SQLite errors become StoreUnavailable."""
        with self.connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # connection() closes a connection still in a transaction
                raise StoreUnavailable(self.reason(exc)) from exc

    def reason(self, exc: sqlite3.Error) -> str:
        """What went wrong, in words a person can act on."""
        text = str(exc)
        if "locked" in text or "busy" in text:
            return f"{self.path} is locked by another program (waited {self.busy_timeout_s:g} s)"
        if "readonly" in text:
            return f"{self.path} is read-only"
        if "full" in text:
            return f"disk full writing {self.path}"
        if "I/O error" in text:
            return f"cannot write {self.path}: disk I/O error (disk full or failing?)"
        if "not a database" in text or "malformed" in text:
            return f"{self.path} is damaged or not an edgechat history: move it aside or use another --data-dir"
        return f"{self.path}: {text}"

    def close(self) -> None:
        """Close every pooled connection; later use raises StoreUnavailable."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def open_database(
    path: Path, migrations: Sequence[Migration], *, busy_timeout_s: float = 5.0, pool_size: int = 4
) -> Database:
    """Open (creating or migrating) the file at `path`, or raise StoreUnavailable.

    Checks up front what would otherwise fail mid-chat: the directory can be made, the file is
    an intact SQLite database of a schema this code knows, and the write lock can be taken."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():  # chats are private: 0600, and SQLite gives -wal/-shm the same mode
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StoreUnavailable(f"cannot create {exc.filename or path}: {exc.strerror}") from exc
    db = Database(path, busy_timeout_s=busy_timeout_s, pool_size=pool_size)
    try:
        with db.connection() as conn:
            try:
                bad = [row[0] for row in conn.execute("PRAGMA quick_check")]
                if bad != ["ok"]:
                    raise StoreUnavailable(f"{path} is damaged ({bad[0]}): move it aside or use another --data-dir")
                version = _known_version(conn, path, len(migrations))
                conn.execute("PRAGMA journal_mode = WAL")  # only now: never rewrite a file that is not ours
                _migrate(conn, path, version, migrations)
                conn.execute("BEGIN IMMEDIATE")  # can we write at all?
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(db.reason(exc)) from exc
    except BaseException:
        db.close()
        raise
    return db


def _known_version(conn: sqlite3.Connection, path: Path, latest: int) -> int:
    """The file's schema version, if this code can use it (after migrating)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > latest:
        raise StoreUnavailable(f"{path} was written by a newer edgechat (schema {version} > {latest})")
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        raise StoreUnavailable(f"{path} is an SQLite file but not an edgechat history: use another --data-dir")
    return version


def _migrate(conn: sqlite3.Connection, path: Path, version: int, migrations: Sequence[Migration]) -> None:
    """Each step in its own transaction, after a backup of a file that held chats already."""
    if 0 < version < len(migrations):
        backup = sqlite3.connect(path.with_name(f"{path.name}.v{version}.bak"))
        try:
            conn.backup(backup)
        finally:
            backup.close()
    for target in range(version + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
