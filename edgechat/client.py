"""Per-conversation chat client: messages in, typed events out, with the history budget.

Lightweight by design: a browser session, the terminal and each API request build one over the
shared backend. It owns the ONE rule for what of a conversation goes to the model (oldest turns
dropped first until the prompt fits), for the local engine and a remote server alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

from edgechat import metrics
from edgechat.backend import Backend
from edgechat.templates import ChatTokenizer
from edgechat.types import (
    ChatEvent,
    ChatRequest,
    Done,
    Failed,
    FailKind,
    FinishReason,
    Generation,
    Message,
    SamplingParams,
    Text,
    Trimmed,
    TurnStats,
)

BLANK_INPUT_HINT = "Type a question first: empty input is ignored."
# At most this share of the context is kept free for the answer when trimming history (less when
# max_new_tokens is smaller): a long chat still gets a real answer, not one cut after a few words.
ANSWER_SHARE = 4


def with_handout(messages: Sequence[Message], handout: str | None) -> list[Message]:
    """The room's handout (--handout) at the start of the system prompt, before the conversation's
    own: the same first tokens in every conversation, so the room reads them once (edgechat.sharing)."""
    messages = list(messages)
    if not handout:
        return messages
    if messages and messages[0]["role"] == "system":
        own = messages[0]["content"].strip()
        return [Message(role="system", content=f"{handout}\n\n{own}" if own else handout), *messages[1:]]
    return [Message(role="system", content=handout), *messages]


class ContextOverflow(ValueError):
    """The newest question (with the system prompt) alone does not fit the context."""


class ChatClient:
    """`chat_stream(input, history)` yields the answer as text (the seed's API); `stream(...)`
    yields typed events; `last_stats` holds the figures of the last answer."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: ChatTokenizer | None = None,
        *,
        sampling: SamplingParams | None = None,
        system: str | None = None,
        cache_key: str | None = None,
        source: str = "page",
        handout: str | None = None,
    ) -> None:
        """`handout`: the room's --handout, put at the start of every prompt's system message."""
        self.backend = backend
        self.handout = handout
        self.source = source  # who asks, for /metrics: "page", "api" or "terminal"
        self.tokenizer = tokenizer  # for --show-prompt; None when a remote server tokenizes
        self.sampling = sampling or SamplingParams()
        self.system = system
        self.cache_key = cache_key or uuid.uuid4().hex  # the KV cache key of this conversation
        self.last_stats = TurnStats()

    @property
    def max_len(self) -> int:
        return self.backend.max_len

    def messages_for(self, input: str, history: Sequence[Message], system: str | None = None) -> list[Message]:
        """System prompt + history + the new question. A history that already ends with this
        question (the seed's web_demo passes it so) is not repeated; a system message in the
        history wins over the default one."""
        turns = [Message(role=m["role"], content=m["content"]) for m in history]
        if turns and turns[-1]["role"] == "user" and turns[-1]["content"] == input:
            turns.pop()
        system = self.system if system is None else system
        head = [Message(role="system", content=system)] if system else []
        if turns and turns[0]["role"] == "system":
            head, turns = [turns[0]], turns[1:]
        return [*head, *turns, Message(role="user", content=input)]

    def prompt_budget(self, max_new_tokens: int) -> int:
        room = min(max_new_tokens, self.backend.max_len // ANSWER_SHARE)
        return min(self.backend.max_len - room, self.backend.max_prompt_len)

    def fit(
        self, messages: Sequence[Message], max_new_tokens: int, continue_last: bool = False, trim: bool = True
    ) -> tuple[list[Message], int]:
        """The messages that fit the prompt budget, oldest turns dropped first (a turn starts at
        a user message), and how many messages were dropped. A binary search over where the kept
        history starts: O(log n) prompt renders, not one per dropped turn.
        Raises ContextOverflow when the last turn alone does not fit, or, with `trim` False (the
        API's default, as OpenAI's), when the whole conversation does not."""
        messages = list(messages)
        head = 1 if messages and messages[0]["role"] == "system" else 0
        last_turn = max(
            (i for i, m in enumerate(messages) if i >= head and m["role"] == "user"), default=len(messages) - 1
        )
        starts = [i for i in range(head, last_turn + 1) if i == head or messages[i]["role"] == "user"]
        if not trim or not starts:  # nothing to trim (a system message alone), or not allowed to
            starts = [head]
        budget = self.prompt_budget(max_new_tokens)

        def kept(start: int) -> list[Message]:
            return messages[:head] + messages[start:]

        low, high = 0, len(starts) - 1
        if self.backend.prompt_size(kept(starts[high]), continue_last) > budget:
            size = self.backend.prompt_size(kept(starts[high]), continue_last)
            what = "your message is" if trim else "the conversation is"
            raise ContextOverflow(
                f"input length is too long: {what} {size} tokens with the prompt format, and this "
                f"model's context holds {budget} before the answer; shorten it"
            )
        while low < high:  # the first start whose prompt fits
            mid = (low + high) // 2
            if self.backend.prompt_size(kept(starts[mid]), continue_last) <= budget:
                high = mid
            else:
                low = mid + 1
        return kept(starts[low]), starts[low] - head

    def prompt_ids(self, input: str, history: Sequence[Message] = (), system: str | None = None) -> list[int]:
        """The ids the model would read for this question (terminal --show-prompt)."""
        if self.tokenizer is None:
            raise ValueError("--show-prompt needs a local model: a remote server renders the prompt itself")
        messages = with_handout(self.messages_for(input, history, system), self.handout)
        messages, _ = self.fit(messages, self.sampling.max_new_tokens)
        return self.tokenizer.render(messages)

    def stream(
        self,
        messages: Sequence[Message],
        sampling: SamplingParams | None = None,
        continue_last: bool = False,
        trim: bool = True,
    ) -> Generation:
        """Typed events for one answer: Trimmed (if history was dropped), Queued while waiting,
        Text pieces, Failed if it failed, then always one Done. `cancel()` stops it. With `trim`
        False a conversation over the budget is refused (TOO_LONG) instead of trimmed."""
        sampling = sampling or self.sampling
        messages = with_handout(messages, self.handout)
        try:
            kept, dropped = self.fit(messages, sampling.max_new_tokens, continue_last, trim)
        except ValueError as err:  # too long, or a history the template rejects
            stats = TurnStats(finish_reason=FinishReason.ERROR, error=str(err))
            kind = FailKind.TOO_LONG if isinstance(err, ContextOverflow) else FailKind.BAD_REQUEST
            return Generation(iter([Failed(str(err), refused=True, kind=kind), self._done(stats)]))
        inner = self.backend.generate(
            ChatRequest(kept, sampling, cache_key=self.cache_key, continue_last=continue_last)
        )
        return Generation(self._relay(inner, dropped), inner.cancel)

    def _relay(self, inner: Generation, dropped: int) -> Iterator[ChatEvent]:
        try:
            if dropped:
                yield Trimmed(dropped)
            for event in inner:
                if isinstance(event, Done):
                    event.stats.trimmed_messages = dropped
                    yield self._done(event.stats)
                else:
                    yield event
        finally:
            inner.close()

    def _done(self, stats: TurnStats) -> Done:
        """Every answer of every caller ends here, once: the one place its figures are counted."""
        self.last_stats = stats
        metrics.observe_answer(self.source, stats)
        return Done(stats)

    def chat_stream(
        self,
        input: str,
        history: Sequence[Message] = (),
        *,
        sampling: SamplingParams | None = None,
        system: str | None = None,
    ) -> Iterator[str]:
        """The seed's generator: the answer's text pieces. Why it stopped early (too long, busy,
        an engine error) is in `last_stats.error`; a blank question yields nothing."""
        self.last_stats = TurnStats()
        if not input.strip():
            self.last_stats.error = BLANK_INPUT_HINT
            return
        events = self.stream(self.messages_for(input, history, system), sampling)
        error = None
        try:
            for event in events:
                if isinstance(event, Text):
                    yield event.text
                elif isinstance(event, Failed):
                    error = event.message
        finally:
            if self.last_stats.finish_reason is None:  # the reader stopped early (Stop, Ctrl-C, a closed tab)
                events.cancel()
                for _ in events:  # ends within a step; its Done brings the figures of what was said
                    pass
            self.last_stats.error = self.last_stats.error or error
