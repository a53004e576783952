"""Saved chats for conversations: the process's one store, and a conversation's saved copy.

`SavedChat.sync` runs after every change of a conversation (its `on_change`, at most about once a
second while an answer streams) and writes only what changed: a new message is appended, the
growing answer is one UPDATE of one row, a regenerated or edited tail is replaced. A store that
fails turns history off for that conversation with a one-line reason; the chat goes on in memory.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from edgechat.conversation import Conversation
from edgechat.owner import Owner
from edgechat.records import OPTIONAL, Record
from edgechat.store import DB_NAME, ChatNotFound, Store, StoreUnavailable, default_data_dir, open_store

log = logging.getLogger(__name__)

_lock = threading.Lock()
_stores: dict[Path, Store | StoreUnavailable] = {}
_live: weakref.WeakValueDictionary[str, Conversation] = weakref.WeakValueDictionary()  # chat id -> open conversation


def shared_store(data_dir: Path | None, keep_days: int) -> Store:
    """The process's store for `data_dir` (default: the per-user data directory), opened once,
    old chats purged at that moment (`--keep-days`, 0 = keep). Raises StoreUnavailable, once per
    process and path, with the reason; later calls raise the same reason without retrying."""
    path = (data_dir or default_data_dir()) / DB_NAME
    with _lock:
        store = _stores.get(path)
        if store is None:
            try:
                store = open_store(path)
                if keep_days > 0:
                    gone = store.purge_older_than(keep_days)
                    if gone:
                        log.info("purged %d chats not touched for %d days", gone, keep_days)
            except StoreUnavailable as err:
                log.warning("history is off: %s", err)
                store = err
            _stores[path] = store
    if isinstance(store, StoreUnavailable):
        raise store
    return store


def settings_of(conversation: Conversation) -> dict[str, Any]:
    """What a saved chat keeps of a conversation's answer settings."""
    s = conversation.sampling
    sampling = {k: getattr(s, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")}
    return {"system": conversation.system, "sampling": sampling}


def wait_until_idle(chat_id: str, timeout: float = 5.0) -> None:
    """A chat whose answer is still being written by a page that just went away (a reload) is
    read after that answer's last save, so the reloaded page does not continue a stale copy."""
    conversation = _live.get(chat_id)
    if conversation is not None and conversation.answer is not None:
        conversation.answer.join(timeout)


class SavedChat:
    """Keeps one conversation's saved copy current. The chat is created in the store with its
    first question, so opening the page and leaving does not leave empty chats behind."""

    def __init__(self, store: Store, owner: Owner, chat_id: str | None = None, saved: list[Record] | None = None):
        self.store = store
        self.owner = owner
        self.chat_id = chat_id
        self.failure: str | None = None  # why history went off for this chat; None while it works
        self._saved: list[Record] = [dict(r) for r in saved or []]
        self._settings: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def attach(self, conversation: Conversation) -> None:
        conversation.on_change = self.sync
        if self.chat_id is not None:
            conversation.client.cache_key = self.chat_id  # the chat's KV cache survives a reload
            _live[self.chat_id] = conversation

    def sync(self, conversation: Conversation) -> None:
        with self._lock:
            if self.failure is not None:
                return
            try:
                self._sync(conversation)
            except (StoreUnavailable, ChatNotFound) as err:
                self.failure = str(err) if isinstance(err, StoreUnavailable) else "this chat was deleted elsewhere"
                log.warning("history is off for a chat: %s", self.failure)

    def _sync(self, conversation: Conversation) -> None:
        answer = conversation.answer
        streaming = answer.record if answer is not None and answer.running else None
        records = [dict(r) for r in conversation.records]
        if not records and self.chat_id is None:
            return
        if self.chat_id is None:
            self.chat_id = self.store.create_conversation(self.owner, settings_of(conversation))
            self._settings = settings_of(conversation)
            self.attach(conversation)
        first = next(
            (i for i, (a, b) in enumerate(zip(records, self._saved, strict=False)) if a != b),
            min(len(records), len(self._saved)),
        )
        if first == len(self._saved) - 1 and len(records) >= len(self._saved) and records[first]["role"] == "assistant":
            self._update(first, records[first], partial=conversation.records[first] is streaming)
            first += 1
        elif first < len(self._saved):
            self.store.replace_tail(self.owner, self.chat_id, first)
        for position in range(first, len(records)):
            record, partial = records[position], conversation.records[position] is streaming
            self.store.append_message(self.owner, self.chat_id, record["role"], record["content"], streaming=partial)
            if not partial and any(record.get(field) for field in OPTIONAL):
                self._update(position, record, partial=False)
        self._saved = records
        self.save_settings(conversation)

    def _update(self, position: int, record: Record, partial: bool) -> None:
        if partial:  # saved marked interrupted until the final save: a crash leaves it so
            self.store.update_message(self.owner, self.chat_id or "", position, record["content"])
            return
        self.store.update_message(
            self.owner,
            self.chat_id or "",
            position,
            record["content"],
            final=True,
            stopped=bool(record.get("stopped")),
            interrupted=bool(record.get("interrupted")),
            stats=record.get("stats"),
            trimmed=int(record.get("trimmed") or 0),
            error=record.get("error"),
        )

    def save_settings(self, conversation: Conversation) -> None:
        settings = settings_of(conversation)
        if self.chat_id is not None and settings != self._settings:
            self.store.set_settings(self.owner, self.chat_id, settings)
            self._settings = settings
