"""A second process for tests/test_store_faults.py and tests/test_store_writers.py:
`python -m tests.store_worker COMMAND DB [ARGS]`.

The owner token comes in EDGECHAT_TEST_OWNER (never on the command line). Each command prints
JSON lines the test reads; every wait here ends when the parent closes stdin or kills us.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import sys
from pathlib import Path

from edgechat.owner import Owner
from edgechat.store import StoreUnavailable, open_store


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def partial(i: int) -> str:
    """The answer text after update i: what the killed writer last saved is one of these."""
    return "".join(f"word{n} " for n in range(i))


def main(argv: list[str]) -> None:
    command, path = argv[0], Path(argv[1])
    owner = Owner.from_token(os.environ.get("EDGECHAT_TEST_OWNER", "")) if command != "hold-lock" else None
    if command == "stream":  # an answer saved as it streams, until SIGKILL
        store, chat_id = open_store(path), argv[2]
        position = store.append_message(owner, chat_id, "assistant", "", streaming=True)
        i = 0
        while True:
            i += 1
            store.update_message(owner, chat_id, position, partial(i))
            say(saved=i, position=position)
    elif command == "write":  # two chats written at full speed while the parent's threads write
        store, n = open_store(path), int(argv[2])
        ids = [store.create_conversation(owner, {"system": f"process chat {k}"}) for k in range(2)]
        say(ready=True)
        sys.stdin.readline()  # go
        for i in range(n):
            for k, chat_id in enumerate(ids):
                pos = store.append_message(owner, chat_id, "assistant", "", streaming=True)
                store.update_message(owner, chat_id, pos, f"p{k}-{i}-partial")
                store.update_message(owner, chat_id, pos, f"p{k}-{i}", final=True, stats={"i": i})
        say(ids=ids)
    elif command == "hold-lock":  # another program holding a lock until told to stop
        conn = sqlite3.connect(path, isolation_level=None)
        if argv[2] == "exclusive":  # nobody else may even read
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("SELECT count(*) FROM conversations").fetchone()
        else:  # SQLite's write lock: readers go on under WAL
            conn.execute("BEGIN IMMEDIATE")
        say(locked=True)
        sys.stdin.readline()
        conn.execute("ROLLBACK")
    elif command == "fill":  # a disk that fills up: writes past a file-size limit fail
        store = open_store(path)
        chat_id = store.create_conversation(owner, {})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write(), not a kill
        limit = path.stat().st_size + (512 << 10)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        saved = 0
        try:
            for i in range(10_000):
                store.append_message(owner, chat_id, "user", f"{i:05d}" + "x" * (64 << 10))
                saved = i + 1
        except StoreUnavailable as exc:
            say(chat=chat_id, saved=saved, reason=exc.reason)
            return
        say(chat=chat_id, saved=saved, reason=None)
    elif command == "open":  # open and write once; report what happened
        try:
            store = open_store(path, busy_timeout_s=0.5)
            store.create_conversation(owner, {})
        except StoreUnavailable as exc:
            say(ok=False, reason=exc.reason)
        else:
            say(ok=True, reason=None)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
