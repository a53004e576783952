"""The store's faults, each one StoreUnavailable with a one-line reason: a garbage or damaged file,
a folder that cannot be made, read-only places, a lock held by another program (a second process,
tests/store_worker.py), a full disk — and what was saved is kept."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest

from edgechat.owner import new_owner_token
from edgechat.store import DB_NAME, StoreUnavailable, open_store
from tests.store_fixtures import (
    WAIT_S,
    db_fixture,  # noqa: F401 — the `db` fixture
    owner,
    read_line,
    worker,
)


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
