"""One conversation: its records, the actions a person takes on them, and the answer in progress.

The page and the terminal both drive a Conversation: ask, regenerate, edit-and-resend, continue,
stop. An answer is produced by a thread of its own that writes into the conversation's last
record as text arrives, so no page rerun, reload or closed tab can lose it: the page only renders
what the record holds. Every change is reported to `on_change` (at most about once a second
while an answer streams), which is how saved chats stay current. What a record holds, and how many
records a conversation keeps, edgechat.records says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgechat.client import ChatClient
from edgechat.config import Settings
from edgechat.records import MAX_CHARS, MAX_RECORDS, Record
from edgechat.types import Done, Failed, FinishReason, Message, Queued, SamplingParams, Text, Trimmed

SAVE_INTERVAL_S = 1.0  # a streaming answer is reported to on_change at least this often


@dataclass(frozen=True)
class Refusal:
    """Why an action was not taken: a key of edgechat.ui_text and its fields."""

    key: str
    fields: dict[str, Any] = field(default_factory=dict)


class Answer:
    """The answer being produced into `record` by a thread of its own."""

    def __init__(
        self,
        conversation: Conversation,
        record: Record,
        messages: list[Message],
        continuing: bool,
        release: Callable[[], None],
    ) -> None:
        self.record = record
        self._release = release
        # A page's answer with no sign of its page for this long was left behind (see _page_gone).
        self.watch_s = conversation.watch_s
        self._alive = conversation.alive
        self._touched = time.monotonic()  # the page's last sign of life: the question, a follow, a probe
        self.queued: Queued | None = None  # the latest queue position while waiting
        self.refusal: str | None = None  # set when the request was refused before any text
        self._conversation = conversation
        self._generation = conversation.client.stream(messages, conversation.sampling, continue_last=continuing)
        self._interrupted = False
        self._changed = threading.Condition()
        self._finished = threading.Event()  # no more text comes; the conversation is being settled
        self._done = threading.Event()  # settled: records restored or final, saved (join waits for this)
        self._thread = threading.Thread(target=self._run, name="edgechat-answer", daemon=True)

    @property
    def running(self) -> bool:
        return not self._finished.is_set()

    def start(self) -> None:
        self._thread.start()

    def cancel(self, interrupted: bool = False) -> None:
        """Stop generating; the text so far stays, marked stopped (or interrupted: the person's
        page went away rather than pressing Stop)."""
        self._interrupted = interrupted
        self._generation.cancel()

    def touch(self) -> None:
        """A reader is following this answer (the page's render loop calls it every frame)."""
        self._touched = time.monotonic()

    def _page_gone(self) -> bool:
        """No sign of the page for `watch_s`: nobody followed the answer and, where the page can be
        asked (`alive`), it says it is gone. A slow page is not a gone page: on a busy box a page's
        run may start following seconds after its question, while its session is still open."""
        if self.watch_s is None or time.monotonic() - self._touched <= self.watch_s:
            return False
        if self._alive is not None and self._alive():
            self.touch()
            return False
        return True

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until the text is longer than `seen` characters or the answer ended; False on
        timeout. Lets a reader follow the answer without polling."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._finished.is_set() or len(self.record["content"]) > seen, timeout=timeout
            )

    def join(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def _run(self) -> None:
        saved = time.monotonic()
        try:
            for event in self._generation:
                if self._page_gone():
                    self.cancel(interrupted=True)  # its page went away without saying so
                if isinstance(event, Text):
                    self.queued = None
                    self._update(content=self.record["content"] + event.text)
                    if time.monotonic() - saved >= SAVE_INTERVAL_S:
                        self._conversation.changed()
                        saved = time.monotonic()
                elif isinstance(event, Queued):
                    self.queued = event
                elif isinstance(event, Trimmed):
                    self._update(trimmed=event.messages)
                elif isinstance(event, Failed):
                    if event.refused and not self.record["content"]:
                        self.refusal = event.message
                    else:
                        self._update(error=event.message)
                elif isinstance(event, Done):
                    self._finish(event)
        except Exception as err:  # noqa: BLE001 — the answer fails, the session goes on
            self._update(error=f"the answer failed ({type(err).__name__}: {err}); try again")
        finally:
            self._release()
            with self._changed:
                self._finished.set()
                self._changed.notify_all()
            try:
                self._conversation.answer_ended(self)
            finally:
                self._done.set()

    def _finish(self, done: Done) -> None:
        stats = done.stats
        if stats.completion_tokens:
            self._update(stats=stats.figures())
        if stats.finish_reason is FinishReason.CANCELLED:
            self._update(**{"interrupted" if self._interrupted else "stopped": True})

    def _update(self, **values: Any) -> None:
        with self._changed:
            self.record.update(values)
            self._changed.notify_all()


class Conversation:
    """Records plus the per-conversation answer settings (system prompt, sampling)."""

    def __init__(
        self,
        client: ChatClient,
        *,
        sampling: SamplingParams,
        system: str = "",
        max_input_chars: int = Settings.max_input_chars,
        records: list[Record] | None = None,
        on_change: Callable[[Conversation], None] | None = None,
        watch_s: float | None = None,
        alive: Callable[[], bool] | None = None,
        admission: Callable[[], Callable[[], None] | None] | None = None,
    ) -> None:
        self.client = client
        self.sampling = sampling
        self.system = system
        self.max_input_chars = max_input_chars
        self.records: list[Record] = records or []
        self.on_change = on_change
        self.watch_s = watch_s  # see Answer._page_gone; None: the reader never goes away silently (terminal)
        self.alive = alive  # whether the reader (a page's session) is still there; None: only touch() tells
        # A slot for one more answer of this person (edgechat.access.ClientLimits.acquire): its
        # release function, or None when they already have their share running or waiting.
        self.admission = admission or (lambda: lambda: None)
        self.answer: Answer | None = None
        self.refusals: list[str] = []  # why the last answers were refused (busy, too long), shown once
        self.dropped = 0  # messages removed because the conversation outgrew MAX_RECORDS / MAX_CHARS
        self._lock = threading.RLock()
        self._before: list[Record] = []  # the records before the running action, restored if refused

    # ---- what the page asks ----

    @property
    def busy(self) -> bool:
        return self.answer is not None and self.answer.running

    @property
    def can_continue(self) -> bool:
        """The last answer ended early (Stop, a closed page, the length cap) and can go on."""
        if self.busy or not self.records or self.records[-1]["role"] != "assistant":
            return False
        last = self.records[-1]
        cut = (last.get("stats") or {}).get("finish_reason") == FinishReason.LENGTH.value
        return bool(last["content"]) and (last.get("stopped") or last.get("interrupted") or cut)

    def check(self, text: str) -> Refusal | None:
        """Why `text` cannot be sent as a question; None if it can. Checked here, server-side,
        whatever the page's widgets allow."""
        if not text.strip():
            return Refusal("blank")
        if len(text) > self.max_input_chars:
            return Refusal("too_long", {"n": len(text), "limit": self.max_input_chars})
        if self.busy:
            return Refusal("busy_answering")
        return None

    def set_system(self, text: str) -> Refusal | None:
        """The system prompt for the next answers, under the same length cap as a question."""
        if len(text) > self.max_input_chars:
            return Refusal("system_too_long", {"n": len(text), "limit": self.max_input_chars})
        self.system = text.strip()
        return None

    def messages_for_model(self, records: list[Record] | None = None) -> list[Message]:
        """What the model sees: the system prompt, then the turns; an answer stopped before its
        first word is left out with its question."""
        out: list[Message] = [Message(role="system", content=self.system)] if self.system.strip() else []
        for r in self.records if records is None else records:
            if r["role"] == "assistant" and not r["content"] and (r.get("stopped") or r.get("interrupted")):
                if out and out[-1]["role"] == "user":
                    out.pop()
                continue
            out.append(Message(role=r["role"], content=r["content"]))
        return out

    # ---- actions ----

    def ask(self, text: str) -> Refusal | None:
        refusal = self.check(text)
        release = self.admission() if refusal is None else None
        if release is None:
            return refusal or Refusal("too_many_at_once")
        with self._lock:
            self._before = list(self.records)
            self.records.append({"role": "user", "content": text})
            self._answer_last_question(release)
        return None

    def regenerate(self) -> Refusal | None:
        if self.busy:
            return Refusal("busy_answering")
        if not any(r["role"] == "user" for r in self.records):
            return Refusal("blank")
        release = self.admission()
        if release is None:
            return Refusal("too_many_at_once")
        with self._lock:
            self._before = list(self.records)
            while self.records and self.records[-1]["role"] == "assistant":
                self.records.pop()
            self._answer_last_question(release)
        return None

    def edit(self, text: str) -> Refusal | None:
        """Replace the last question (and its answer) with `text`, and answer that."""
        refusal = self.check(text)
        release = self.admission() if refusal is None else None
        if release is None:
            return refusal or Refusal("too_many_at_once")
        with self._lock:
            self._before = list(self.records)
            last_user = max((i for i, r in enumerate(self.records) if r["role"] == "user"), default=len(self.records))
            del self.records[last_user:]
            self.records.append({"role": "user", "content": text})
            self._answer_last_question(release)
        return None

    def continue_answer(self) -> Refusal | None:
        """Generate on from the last answer's end (after Stop, a closed page or the length cap)."""
        if not self.can_continue:
            return Refusal("cannot_continue")
        release = self.admission()
        if release is None:
            return Refusal("too_many_at_once")
        with self._lock:
            self._before = [*self.records[:-1], dict(self.records[-1])]
            record = self.records[-1]
            for flag in ("stopped", "interrupted", "error"):
                record.pop(flag, None)
            self._start(record, True, release)
        return None

    def stop(self, interrupted: bool = False) -> None:
        """Stop the answer in progress, keeping its text (`interrupted`: the page went away)."""
        answer = self.answer
        if answer is not None and answer.running:
            answer.cancel(interrupted)

    def clear(self) -> None:
        """New chat in the same conversation object: the records go, and the cached KV with them."""
        self.stop()
        with self._lock:
            self.records = []
            self.refusals = []
        self.client.backend.forget_cache(self.client.cache_key)
        self.changed()

    # ---- the answer thread's callbacks ----

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def answer_ended(self, answer: Answer) -> None:
        with self._lock:
            if answer.refusal is not None:  # not answered at all: as if never asked, and say why
                self.records[:] = self._before
                self.refusals.append(answer.refusal)
            self._cap()
        self.changed()

    # ---- internals ----

    def _answer_last_question(self, release: Callable[[], None]) -> None:
        record: Record = {"role": "assistant", "content": ""}
        self.records.append(record)
        self._start(record, False, release)

    def _start(self, record: Record, continuing: bool, release: Callable[[], None]) -> None:
        messages = self.messages_for_model(self.records if continuing else self.records[:-1])
        try:
            self.answer = Answer(self, record, messages, continuing, release)
        except BaseException:
            release()
            raise
        self.changed()  # the question is saved before the answer starts
        self.answer.start()

    def _cap(self) -> None:
        """Drop the oldest turns while the conversation is over MAX_RECORDS or MAX_CHARS."""
        size = sum(len(r["content"]) for r in self.records)
        while len(self.records) > 2 and (len(self.records) > MAX_RECORDS or size > MAX_CHARS):
            size -= len(self.records[0]["content"])
            del self.records[0]
            self.dropped += 1
            while len(self.records) > 2 and self.records[0]["role"] != "user":
                size -= len(self.records[0]["content"])
                del self.records[0]
                self.dropped += 1
