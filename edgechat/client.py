"""Per-session chat client: history to prompt ids, history budget, streaming text, stats.

Lightweight by design: a browser session or a terminal builds one over the shared scheduler and
chat tokenizer. It never touches the engine; it submits a request and reads token events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from edgechat.errors import RequestError
from edgechat.scheduler import Scheduler
from edgechat.templates import ChatTokenizer
from edgechat.types import Failed, Message, RequestStats, SamplingParams, Token, TokenEvent, TurnStats

if TYPE_CHECKING:
    from edgechat.engines.remote import RemoteEngine

# Tokens kept free for the answer when trimming history (fewer if max_new_tokens is smaller).
MIN_ANSWER_ROOM = 64
BLANK_INPUT_HINT = "Type a question first: empty input is ignored."


class ChatClient:
    """`chat_stream(input, history)` yields the answer as text pieces; `last_stats` afterwards."""

    def __init__(
        self,
        engine: Scheduler | RemoteEngine,
        tokenizer: ChatTokenizer | None,
        *,
        sampling: SamplingParams | None = None,
        system: str | None = None,
        max_len: int | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams()
        self.system = system
        # A remote server takes messages, not ids: it templates, tokenizes and batches itself.
        self.chat_level = getattr(engine, "chat_level", False)
        self.max_len = max_len or (engine.max_len if self.chat_level else engine.engine.max_len)
        self.session = uuid.uuid4().hex
        self.last_stats = TurnStats()
        self.on_event: Callable[[TokenEvent], None] | None = None  # queue position etc., for the page

    def build_messages(self, input: str, history: Sequence[Message]) -> list[Message]:
        """System prompt + history + the new question; a history that already ends with this
        question (the seed's web_demo passes it so) is not repeated."""
        turns = [Message(role=m["role"], content=m["content"]) for m in history]
        if turns and turns[-1]["role"] == "user" and turns[-1]["content"] == input:
            turns.pop()
        system = [Message(role="system", content=self.system)] if self.system else []
        if turns and turns[0]["role"] == "system":
            system, turns = [turns[0]], turns[1:]
        return [*system, *turns, Message(role="user", content=input)]

    def fit(self, messages: list[Message], sampling: SamplingParams) -> tuple[list[int], int]:
        """Prompt ids that fit the context, dropping the oldest turns first; the count dropped.
        Raises RequestError when the question alone does not fit."""
        budget = self.max_len - min(sampling.max_new_tokens, MIN_ANSWER_ROOM)
        head = 1 if messages[0]["role"] == "system" else 0
        dropped = 0
        while True:
            ids = self.tokenizer.render(messages)
            if len(ids) <= budget:
                return ids, dropped
            if len(messages) - head <= 1:
                raise RequestError(
                    f"input length is too long: your message is {len(ids)} tokens with the prompt "
                    f"format, and this model's context holds {budget} before the answer; shorten it"
                )
            # Drop the oldest turn; keep the history starting at a user turn.
            del messages[head]
            dropped += 1
            while len(messages) - head > 1 and messages[head]["role"] != "user":
                del messages[head]
                dropped += 1

    def prompt_ids(self, input: str, history: Sequence[Message] = ()) -> list[int]:
        messages = self.build_messages(input, history)
        return self.fit(messages, self.sampling)[0]

    def chat_stream(
        self,
        input: str,
        history: Sequence[Message] = (),
        *,
        sampling: SamplingParams | None = None,
    ) -> Iterator[str]:
        sampling = sampling or self.sampling
        self.last_stats = stats = TurnStats()
        if not input.strip():
            stats.notice = BLANK_INPUT_HINT
            return
        if self.chat_level:
            yield from self._chat_remote(input, history, sampling, stats)
            return
        try:
            ids, stats.trimmed_messages = self.fit(self.build_messages(input, history), sampling)
            handle = self.engine.submit(ids, sampling, self.tokenizer.stop_ids, session=self.session)
        except (RequestError, ValueError) as err:
            stats.notice = str(err)
            yield str(err)
            return
        detok = self.tokenizer.detokenizer()
        try:
            for event in handle:
                if isinstance(event, Token):
                    text = detok.feed(event.id)
                    if text:
                        yield text
                elif isinstance(event, Failed):
                    stats.error = event.message
                elif self.on_event is not None:
                    self.on_event(event)
            tail = detok.flush()
            if tail:
                yield tail
        finally:
            handle.cancel()  # no-op when finished; frees the sequence when the consumer stopped
            self._record(stats, handle.stats)

    def _chat_remote(
        self, input: str, history: Sequence[Message], sampling: SamplingParams, stats: TurnStats
    ) -> Iterator[str]:
        """The chat-level path: the engine streams text; closing this generator closes the stream."""
        request = self.engine.chat(self.build_messages(input, history), sampling)  # type: ignore[union-attr]
        stats.trimmed_messages = request.trimmed_messages
        try:
            yield from request
        finally:
            stats.error = request.error
            self._record(stats, request.stats)

    @staticmethod
    def _record(stats: TurnStats, measured: RequestStats) -> None:
        figures = TurnStats.measured(measured)
        for key in ("prompt_tokens", "reused_tokens", "completion_tokens", "queue_wait_s", "first_token_s"):
            setattr(stats, key, getattr(figures, key))
        stats.decode_tps, stats.finish_reason = figures.decode_tps, figures.finish_reason
