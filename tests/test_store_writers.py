"""Many writers on one history file lose nothing: eight threads and a second process
(tests/store_worker.py) at once, and a writer killed with SIGKILL mid-answer leaves everything it
committed, never a torn update."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from edgechat.owner import Owner
from edgechat.store import open_store
from tests.store_fixtures import (
    WAIT_S,
    db_fixture,  # noqa: F401 — the `db` fixture
    owner,
    read_line,
    worker,
)
from tests.store_worker import partial


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
