"""The one interface the client talks to, whatever answers: a local token engine behind the
scheduler, or an OpenAI-compatible server (edgechat/remote.py).

`LocalBackend` is the local side: it renders messages into prompt ids with the model's chat
template, submits them to the scheduler and turns token events into text events (incremental
UTF-8 detokenizing, stop strings). The remote server does all of that itself, so it implements
the same protocol directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from edgechat.errors import RequestError
from edgechat.scheduler import RequestEvents, Scheduler
from edgechat.stats import BackendStats
from edgechat.templates import ChatTokenizer
from edgechat.types import (
    ChatEvent,
    ChatRequest,
    Done,
    Failed,
    FailKind,
    FinishReason,
    Generation,
    Logprob,
    Message,
    Queued,
    RequestStats,
    Text,
    Tick,
    Token,
    TokenLogprobs,
    TurnStats,
)


class Backend(Protocol):
    name: str
    max_len: int  # tokens one conversation can hold, prompt + answer
    max_prompt_len: int  # most prompt tokens accepted (a TPU bmodel keeps room for the answer)
    logprobs: bool  # honours SamplingParams.logprobs (Text events carry them)
    grammar: bool  # honours SamplingParams.grammar (structured output)

    def prompt_size(self, messages: Sequence[Message], continue_last: bool = False) -> int:
        """Tokens the prompt for `messages` takes (a remote server's is an estimate)."""
        ...

    def generate(self, request: ChatRequest) -> Generation:
        """Text, Queued and Tick events, then one Done (after a Failed if it failed)."""
        ...

    def stats(self) -> BackendStats:
        """Engine-wide figures: running, waiting, aggregate tok/s, alive; a local engine's
        scheduler, room and engine figures."""
        ...

    def health(self) -> str | None:
        """A remote server's reachability line for the server panel; None for a local engine."""
        ...

    def forget_cache(self, cache_key: str) -> None:
        """New chat, or a conversation gone: drop what is cached under its key."""
        ...

    def describe(self) -> dict[str, Any]: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...


class LocalBackend:
    """A token engine behind the scheduler, plus the model family's chat tokenizer."""

    def __init__(self, scheduler: Scheduler, chat: ChatTokenizer, info: dict[str, Any]) -> None:
        self.scheduler = scheduler
        self.chat = chat
        self.info = info
        self.name = str(info.get("backend", "local"))
        self.max_len = scheduler.engine.max_len
        self.max_prompt_len = scheduler.engine.max_prompt_len
        self.logprobs = scheduler.engine.logprobs
        self.grammar = scheduler.engine.grammar

    def prompt_size(self, messages: Sequence[Message], continue_last: bool = False) -> int:
        return len(self.chat.render(messages, continue_last=continue_last))

    def generate(self, request: ChatRequest) -> Generation:
        ids = self.chat.render(request.messages, continue_last=request.continue_last)
        try:
            events = self.scheduler.submit(ids, request.sampling, self.chat.stop_ids, cache_key=request.cache_key)
        except RequestError as err:
            stats = TurnStats.measured(RequestStats(prompt_tokens=len(ids), finish_reason=FinishReason.ERROR))
            stats.error = str(err)
            return Generation(iter([Failed(str(err), refused=True, kind=self._refusal_kind(ids)), Done(stats)]))
        return Generation(self._stream(events, request.sampling.stop), events.cancel)

    def _refusal_kind(self, ids: Sequence[int]) -> FailKind:
        """Why submit refused, from its contract: a dead engine, a prompt too long, else busy."""
        if not self.alive:
            return FailKind.UNAVAILABLE
        return FailKind.TOO_LONG if len(ids) >= self.max_len else FailKind.BUSY

    def _stream(self, events: RequestEvents, stop: Sequence[str]) -> Iterator[ChatEvent]:
        """Text from tokens; the answer's tokens are counted up to the one that completes a stop
        string (the scheduler may have generated one more before it saw the stop), so the usage
        agrees with what was streamed, as OpenAI, vLLM and llama.cpp count."""
        detok = self.chat.detokenizer()
        held = ""  # text that might be the start of a stop string, not shown yet
        stopped = False
        error: str | None = None
        used = 0  # tokens of the answer, up to the one that completed a stop string
        pending: list[Logprob] = []  # log-probabilities of tokens whose text is not out yet
        try:
            for event in events:
                if isinstance(event, Token):
                    if stopped:
                        continue  # generated before the scheduler saw the stop
                    used += 1
                    if event.logprobs is not None:
                        pending.append(self._logprob(event.id, event.logprobs))
                    held += detok.feed(event.id)
                    shown, held, stopped = _split_at_stop(held, stop)
                    if shown or (stopped and pending):
                        yield Text(shown, tuple(pending))
                        pending.clear()
                    if stopped:
                        events.cancel(FinishReason.STOP)
                elif isinstance(event, Failed):
                    error = event.message
                    yield event
                elif isinstance(event, (Queued, Tick)):
                    yield event
            if not stopped and error is None:
                shown, _, _ = _split_at_stop(held + detok.flush(), stop)
                if shown or pending:
                    yield Text(shown, tuple(pending))
        finally:
            events.cancel()  # no-op when finished; frees the sequence when the consumer went away
        stats = TurnStats.measured(events.stats, error=error)
        if stopped:
            stats.completion_tokens = used
        yield Done(stats)

    def _logprob(self, token: int, found: TokenLogprobs) -> Logprob:
        piece = self.chat.tokenizer.token_bytes
        return Logprob(piece(token), found.logprob, tuple((piece(t), lp) for t, lp in found.top))

    def stats(self) -> BackendStats:
        return self.scheduler.stats()

    def health(self) -> str | None:
        return None

    def forget_cache(self, cache_key: str) -> None:
        self.scheduler.forget_cache(cache_key)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)

    @property
    def alive(self) -> bool:
        return self.scheduler.failure is None

    def close(self) -> None:
        self.scheduler.close()
        self.scheduler.engine.close()


def _split_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str, bool]:
    """(text to show now, text to hold back, stop string found). A stop string and what follows
    it are never shown; a tail that could still grow into one is held back."""
    if not stop:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    keep = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[: len(text) - keep], text[len(text) - keep :], False
