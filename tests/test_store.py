"""Saved chats on a real SQLite file: ownership, streaming saves, limits, migrations, faults,
concurrent writers and a writer killed with SIGKILL. Second processes are tests/store_worker.py."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgechat.export import to_json
from edgechat.owner import Owner, new_owner_token
from edgechat.records import CONTENT_MAX, IMPORT_MAX_CHARS, MAX_RECORDS
from edgechat.store import (
    DB_NAME,
    MIGRATIONS,
    TITLE_MAX,
    UNDO_S,
    ChatNotFound,
    Store,
    StoreUnavailable,
    clean_title,
    default_data_dir,
    open_store,
)
from tests.conftest import REPO
from tests.store_worker import partial

WAIT_S = 60  # bound on any wait for a thread or a child process


class Clock:
    """Time the test moves by hand (undo windows, retention), instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / DB_NAME


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Path, clock: Clock) -> Store:
    s = open_store(db, clock=clock)
    yield s
    s.close()


def owner() -> tuple[str, Owner]:
    token = new_owner_token()
    return token, Owner.from_token(token)


def worker(command: str, db: Path, *args: str, token: str = "", **popen) -> subprocess.Popen:  # noqa: ANN003
    env = {**os.environ, "EDGECHAT_TEST_OWNER": token, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_worker", command, str(db), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def read_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, f"worker exited early with {proc.wait(WAIT_S)}"
    return json.loads(line)


# ---- chats and their owners ----


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


# ---- owner tokens ----


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


# ---- limits and imports ----


def test_titles_are_one_plain_capped_line() -> None:
    assert clean_title("  What is\n2+2?\x00\u202e evil\r\n") == "What is 2+2? evil"
    assert clean_title("<img src=x onerror=alert(1)>") == "<img src=x onerror=alert(1)>"  # text, not markup
    assert clean_title("family 👨\u200d👩\u200d👧") == "family 👨\u200d👩\u200d👧"
    long = clean_title("word " * 100)
    assert len(long) == TITLE_MAX and long.endswith("…")


def test_contents_are_capped_text(store: Store) -> None:
    _, me = owner()
    chat = store.create_conversation(me, {})
    longest = "é" * CONTENT_MAX
    pos = store.append_message(me, chat, "assistant", longest)
    for bad in ("x" * (CONTENT_MAX + 1), b"bytes", None):
        with pytest.raises(ValueError):
            store.append_message(me, chat, "user", bad)
        with pytest.raises(ValueError):
            store.update_message(me, chat, pos, bad)
    with pytest.raises(ValueError):
        store.append_message(me, chat, "system", "obey")
    with pytest.raises(ValueError):
        store.create_conversation(me, {"system": "x" * 100_000})
    assert store.get(me, chat).messages == [{"role": "assistant", "content": longest}]


def test_an_export_imports_as_a_new_chat_of_the_importer(store: Store) -> None:
    _, me = owner()
    _, other = owner()
    messages = [
        {"role": "user", "content": "Hi <script>alert(1)</script>\nthere"},
        {"role": "assistant", "content": "Hello!", "stats": {"decode_tps": 99.5}, "trimmed": 2},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Once upon", "stopped": True},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "The dragon", "interrupted": True},  # its page went away
        {"role": "assistant", "content": "", "error": "engine failed"},
    ]
    text = to_json(messages, model="SmolLM2", system="Be brief.", sampling={"temperature": 0.2, "top_k": 40})
    chat = store.import_json(me, text)
    saved = store.get(me, chat)
    assert saved.messages == messages
    assert saved.settings == {"system": "Be brief.", "sampling": {"temperature": 0.2, "top_k": 40}}
    assert saved.title == "Hi <script>alert(1)</script> there"
    assert store.get(other, chat) is None
    again = to_json(
        saved.messages, model="SmolLM2", system=saved.settings["system"], sampling=saved.settings["sampling"]
    )
    assert json.loads(again)["messages"] == json.loads(text)["messages"]  # export → import → export


BAD_IMPORTS = {
    "not json": "not json",
    "too deep": "[" * 100_000 + "]" * 100_000,  # deeper than the parser's recursion limit
    "too big": " " * IMPORT_MAX_CHARS + "{}",  # over the import size cap
    "a list": "[]",
    "messages not a list": '{"messages": "no"}',
    "system role": '{"messages": [{"role": "system", "content": "obey"}]}',
    "content not text": '{"messages": [{"role": "user", "content": 5}]}',
    "flag not bool": '{"messages": [{"role": "user", "content": "ok", "stopped": "yes"}]}',
    "negative trimmed": '{"messages": [{"role": "user", "content": "ok", "trimmed": -1}]}',
    "stats not object": '{"messages": [{"role": "user", "content": "ok", "stats": [1]}]}',
    "system not text": '{"messages": [{"role": "user", "content": "ok"}], "system": 7}',
    "message not object": '{"messages": [{"role": "user", "content": "ok"}, 3]}',
    "content too long": json.dumps({"messages": [{"role": "user", "content": "x" * (CONTENT_MAX + 1)}]}),
    "too many messages": json.dumps({"messages": [{"role": "user", "content": "x"}] * (MAX_RECORDS + 1)}),
    "lone surrogate": '{"messages": [{"role": "user", "content": "\\ud800"}]}',
}


@pytest.mark.parametrize("text", BAD_IMPORTS.values(), ids=BAD_IMPORTS.keys())
def test_a_bad_import_is_refused_whole_with_one_line(store: Store, text: str) -> None:
    _, me = owner()
    with pytest.raises(ValueError) as refused:
        store.import_json(me, text)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200
    assert store.list_conversations(me) == []


def test_a_bad_record_is_refused_by_its_number_and_nothing_is_kept(store: Store) -> None:
    _, me = owner()
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "interrupted": True}]
    text = to_json([*good, {"role": "user", "content": "x", "stopped": "yes"}], model="M")
    with pytest.raises(ValueError, match="^message 3: stopped must be true or false$"):
        store.import_json(me, text)
    assert store.list_conversations(me) == []
    chat = store.create_conversation(me, {})
    with pytest.raises(ValueError, match="^message 3: role must be 'user' or 'assistant', not 'system'$"):
        store.replace_tail(me, chat, 0, [*good, {"role": "system", "content": "obey"}])
    assert store.get(me, chat).messages == []  # the good two are not kept either


# ---- schema versions ----


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


# ---- faults: each is one StoreUnavailable with a one-line reason ----


def _reason_of(exc: pytest.ExceptionInfo[StoreUnavailable]) -> str:
    reason = exc.value.reason
    assert "\n" not in reason and "Traceback" not in reason
    return reason


def test_a_garbage_file_is_reported_not_replaced(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = b"\x00\xffnot sqlite\x07" * 5000
    db.write_bytes(garbage)
    with pytest.raises(StoreUnavailable) as exc:
        open_store(db)
    assert "damaged" in _reason_of(exc) and str(db) in exc.value.reason
    assert db.read_bytes() == garbage


def test_a_damaged_database_is_found_at_open(db: Path) -> None:
    _, me = owner()
    store = open_store(db)
    chat = store.create_conversation(me, {})
    for i in range(200):
        store.append_message(me, chat, "user", f"message {i} " * 50)
    store.close()  # the last connection checkpoints the WAL into the file
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : 6 * page] = b"\xde\xad\xbe\xef" * (3 * page // 4)  # scribble over table pages
    db.write_bytes(bytes(data))
    with pytest.raises(StoreUnavailable) as exc:
        open_store(db)
    assert "damaged" in _reason_of(exc)


def test_a_directory_that_cannot_be_made_or_a_directory_in_the_files_place(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable) as exc:
        open_store(tmp_path / "file" / "edgechat" / DB_NAME)
    assert "cannot create" in _reason_of(exc)
    (tmp_path / DB_NAME).mkdir()
    with pytest.raises(StoreUnavailable) as exc:
        open_store(tmp_path / DB_NAME)
    assert _reason_of(exc) == f"{tmp_path / DB_NAME}: unable to open database file"


def _without_file_permission_override() -> None:
    """In the child before exec: root loses the capabilities that ignore file modes, so a
    read-only file or directory is read-only for it too (CI runs as root)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                os._exit(99)


def _open_unprivileged(db: Path) -> dict:
    proc = worker("open", db, token=new_owner_token(), preexec_fn=_without_file_permission_override)
    out, _ = proc.communicate(timeout=WAIT_S)
    if proc.returncode == 99:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here (no CAP_SETPCAP)")
    assert proc.returncode == 0
    return json.loads(out)


def test_read_only_places_are_reported(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.parent.chmod(0o555)  # the directory: the file cannot be created
    try:
        result = _open_unprivileged(db)
        assert not result["ok"] and "cannot create" in result["reason"] and "Permission denied" in result["reason"]
    finally:
        db.parent.chmod(0o755)
    open_store(db).close()
    db.chmod(0o444)  # the file itself
    result = _open_unprivileged(db)
    assert not result["ok"] and "read-only" in result["reason"], result


@pytest.mark.parametrize("lock", ["write", "exclusive"])
def test_a_file_locked_by_another_program_is_reported_at_open(db: Path, lock: str) -> None:
    open_store(db).close()
    holder = worker("hold-lock", db, lock)
    try:
        assert read_line(holder) == {"locked": True}
        with pytest.raises(StoreUnavailable) as exc:
            open_store(db, busy_timeout_s=0.3)
        assert "locked by another program" in _reason_of(exc)
    finally:
        holder.communicate("\n", timeout=WAIT_S)
    open_store(db).close()  # usable again once the other program lets go


def test_a_lock_held_too_long_fails_a_write_and_the_store_recovers(db: Path) -> None:
    _, me = owner()
    store = open_store(db, busy_timeout_s=0.3)
    chat = store.create_conversation(me, {})
    holder = worker("hold-lock", db, "write")
    try:
        assert read_line(holder) == {"locked": True}
        with pytest.raises(StoreUnavailable) as exc:
            store.append_message(me, chat, "user", "lost while locked")
        assert "locked by another program" in _reason_of(exc)
        assert store.get(me, chat).messages == []  # reads go on under WAL
    finally:
        holder.communicate("\n", timeout=WAIT_S)
    store.append_message(me, chat, "user", "saved after")
    assert store.get(me, chat).messages == [{"role": "user", "content": "saved after"}]
    store.close()


def test_a_full_disk_fails_the_write_and_keeps_what_was_saved(db: Path) -> None:
    token, me = owner()
    open_store(db).close()
    proc = worker("fill", db, token=token)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    result = json.loads(out)
    assert result["reason"] == f"cannot write {db}: disk I/O error (disk full or failing?)"
    assert 0 < result["saved"] < 10_000
    store = open_store(db)
    saved = store.get(me, result["chat"]).messages
    assert [m["content"][:5] for m in saved] == [f"{i:05d}" for i in range(result["saved"])]
    store.close()


# ---- many writers, and a writer killed mid-answer ----


def test_eight_threads_and_a_second_process_writing_at_once_lose_nothing(db: Path) -> None:
    rounds = 50
    store = open_store(db)
    token, proc_owner = owner()
    other = worker("write", db, str(rounds), token=token)
    assert read_line(other) == {"ready": True}
    start = threading.Barrier(9)
    failures: list[BaseException] = []
    chats: list[tuple[Owner, str]] = []

    def session(n: int) -> None:
        try:
            _, me = owner()
            chat = store.create_conversation(me, {})
            chats.append((me, chat))
            start.wait(WAIT_S)
            for i in range(rounds):
                store.append_message(me, chat, "user", f"s{n} q{i}")
                pos = store.append_message(me, chat, "assistant", "", streaming=True)
                for k in range(3):
                    store.update_message(me, chat, pos, f"s{n} a{i} part{k}")
                store.update_message(me, chat, pos, f"s{n} a{i}", final=True, stats={"i": i})
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    start.wait(WAIT_S)
    other.stdin.write("go\n")
    other.stdin.flush()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads) and failures == []
    ids = read_line(other)["ids"]
    assert other.wait(WAIT_S) == 0

    for n, (me, chat) in enumerate(sorted(chats, key=lambda c: store.get(c[0], c[1]).messages[0]["content"])):
        expected = []
        for i in range(rounds):
            expected += [{"role": "user", "content": f"s{n} q{i}"}]
            expected += [{"role": "assistant", "content": f"s{n} a{i}", "stats": {"i": i}}]
        assert store.get(me, chat).messages == expected
    for k, chat in enumerate(ids):
        got = store.get(proc_owner, chat).messages
        assert [m["content"] for m in got] == [f"p{k}-{i}" for i in range(rounds)]
    store.close()


def test_a_writer_killed_mid_answer_leaves_everything_it_committed(db: Path) -> None:
    token, me = owner()
    store = open_store(db)
    chat = store.create_conversation(me, {})
    store.append_message(me, chat, "user", "Write a long story")
    store.close()
    writer = worker("stream", db, chat, token=token)
    try:
        seen = 0
        while seen < 40:
            seen = read_line(writer)["saved"]  # committed before it was printed
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.communicate(timeout=WAIT_S)
    assert writer.returncode == -signal.SIGKILL

    store = open_store(db)
    question, answer = store.get(me, chat).messages
    assert question == {"role": "user", "content": "Write a long story"}
    assert answer["interrupted"] is True and set(answer) == {"role", "content", "interrupted"}
    words = answer["content"].count("word")
    assert words >= seen and answer["content"] == partial(words)  # a whole update, never torn
    store.close()
