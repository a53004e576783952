"""Plain types every layer shares: sampling, finish reasons, request stats, stream events.

This module imports nothing of edgechat's, so anything may import it (the layer test checks).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

STATS_WINDOW_S = 5.0  # aggregate tok/s is measured over this many recent seconds


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; travels inside the request so sessions never share it."""

    temperature: float = 0.2  # SmolLM2 model card: temperature 0.2, top_p 0.9
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.0  # off, as llama.cpp and transformers default; 1.1 derails small models
    frequency_penalty: float = 0.0  # OpenAI's names; llama.cpp's penalties sampler applies them
    presence_penalty: float = 0.0
    max_new_tokens: int = 512
    seed: int = 42
    stop: tuple[str, ...] = ()  # text that ends the answer (not included), as OpenAI's `stop`
    logprobs: int | None = None  # report each token's log-probability and this many alternatives (0..20)
    grammar: str | None = None  # GBNF (root rule `root`) the answer must follow: structured output

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        """Repetition, frequency or presence penalties on: the sampler remembers past tokens."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    @property
    def stateless(self) -> bool:
        """Greedy with no penalties and no grammar: the next token is the argmax of the logits the
        KV cache gives, with no sampler state carried from token to token, so an answer parked
        mid-way and restored goes on exactly as it would have (time slicing parks only these on
        an engine that cannot carry a sampler's state along: `carries_sampling`)."""
        return self.greedy and not self.penalized and self.grammar is None


class FinishReason(str, enum.Enum):
    """Why an answer ended; the values are what the OpenAI API and the exports write."""

    STOP = "stop"  # the model's end-of-turn or a stop string
    LENGTH = "length"  # max new tokens, or the context is full
    CANCELLED = "cancelled"  # Stop, a closed tab, a client that hung up
    TIMEOUT = "timeout"  # --request-timeout
    ERROR = "error"

    @property
    def keeps_cache(self) -> bool:
        """The sequence's cache is consistent and worth keeping for the conversation's next turn
        (a stopped answer may be continued); after an error its state is unknown."""
        return self is not FinishReason.ERROR


@dataclass
class RequestStats:
    """Times and counts of one request, measured where it is served (scheduler or remote stream)."""

    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # left the queue
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    reused_tokens: int = 0  # from this conversation's own cache
    shared_tokens: int = 0  # copied from another's cache (a prefix shared across sessions)
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None

    @property
    def queue_wait_s(self) -> float:
        return (self.started_at or self.finished_at or time.monotonic()) - self.submitted_at

    @property
    def first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first token (the seed's TPS definition)."""
        if self.first_token_at is None or self.finished_at is None or self.completion_tokens < 2:
            return None
        span = self.finished_at - self.first_token_at
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass
class TurnStats:
    """What a person sees under an answer; None where not measured (no token produced)."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    shared_tokens: int = 0
    completion_tokens: int = 0
    queue_wait_s: float = 0.0
    first_token_s: float | None = None
    decode_tps: float | None = None
    trimmed_messages: int = 0
    finish_reason: FinishReason | None = None
    error: str | None = None

    @classmethod
    def measured(cls, stats: RequestStats, trimmed_messages: int = 0, error: str | None = None) -> TurnStats:
        return cls(
            prompt_tokens=stats.prompt_tokens,
            reused_tokens=stats.reused_tokens,
            shared_tokens=stats.shared_tokens,
            completion_tokens=stats.completion_tokens,
            queue_wait_s=stats.queue_wait_s,
            first_token_s=stats.first_token_s,
            decode_tps=stats.decode_tps,
            trimmed_messages=trimmed_messages,
            finish_reason=stats.finish_reason or FinishReason.CANCELLED,
            error=error,
        )

    def figures(self) -> dict[str, Any]:
        """The measured figures kept with an answer (history, exports, the saved chat)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "shared_tokens": self.shared_tokens,
            "completion_tokens": self.completion_tokens,
            "queue_wait_s": self.queue_wait_s,
            "first_token_s": self.first_token_s,
            "decode_tps": self.decode_tps,
            "finish_reason": None if self.finish_reason is None else self.finish_reason.value,
        }

    def summary(self) -> str:
        parts = []
        if self.first_token_s is not None:
            parts.append(f"first token {self.first_token_s:.2f} s")
        if self.decode_tps is not None:
            parts.append(f"{self.decode_tps:.1f} tok/s")
        parts.append(f"{self.completion_tokens} tokens")
        if self.queue_wait_s >= 0.05:
            parts.append(f"queued {self.queue_wait_s:.1f} s")
        if self.finish_reason is FinishReason.LENGTH:
            parts.append("stopped at the length limit")
        return " · ".join(parts)


# ---- what a chat stream yields (backends and the client): text, notices, errors, the end ----


@dataclass(frozen=True)
class Logprob:
    """One generated token as the model saw it: its bytes, its log-probability, and the most likely
    tokens at that step as (bytes, log-probability), most likely first (OpenAI's `logprobs`)."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Text:
    """A piece of the answer, whole UTF-8 characters; with `logprobs` asked, the tokens that
    completed it since the previous piece (a piece may be empty when held text was dropped)."""

    text: str
    logprobs: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class Queued:
    """The request waits for a free sequence: its place in the queue and a rough wait."""

    position: int
    eta_s: float


@dataclass(frozen=True)
class Trimmed:
    """The oldest messages were left out so the conversation fits the context."""

    messages: int


class FailKind(str, enum.Enum):
    """What a caller can do about a failure (the API turns it into an HTTP status)."""

    BUSY = "busy"  # the queue is full: try again in a moment
    TOO_LONG = "too_long"  # the prompt does not fit the context: shorten it
    BAD_REQUEST = "bad_request"  # the messages cannot be rendered (or a server rejected them)
    UNAVAILABLE = "unavailable"  # the engine died or the model server cannot be reached
    ERROR = "error"  # anything else, usually mid-answer


@dataclass(frozen=True)
class Failed:
    """The request could not be served or broke off; any text already streamed stands."""

    message: str
    refused: bool = False  # nothing was generated: too long for the context, busy, bad input
    kind: FailKind = FailKind.ERROR


@dataclass(frozen=True)
class Tick:
    """Nothing new for a while: lets a waiting reader act (check for Stop, redraw)."""


@dataclass(frozen=True)
class Done:
    """The last event of every stream: how it ended and its figures."""

    stats: TurnStats


ChatEvent = Text | Queued | Trimmed | Failed | Done | Tick


@dataclass(frozen=True)
class ChatRequest:
    """One answer to produce. Everything per-request travels here, never on a shared object."""

    messages: Sequence[Message]  # already fitted to the context by the client
    sampling: SamplingParams
    cache_key: str | None = None  # the same conversation's key: its next turn reuses its cached prefix
    continue_last: bool = False  # the last message is a partial answer to go on with


class Generation:
    """An answer in progress: iterate its events. `cancel()`, from any thread, ends it within a
    step and the events still end with Done (with the figures of what was generated); closing
    the iterator also cancels, without the Done."""

    def __init__(self, events: Iterator[ChatEvent], cancel: Callable[[], None] = lambda: None) -> None:
        self._events = events
        self._cancel = cancel

    def __iter__(self) -> Iterator[ChatEvent]:
        return self

    def __next__(self) -> ChatEvent:
        return next(self._events)

    def cancel(self) -> None:
        self._cancel()

    def close(self) -> None:
        close = getattr(self._events, "close", None)  # a generator; a list iterator has nothing to close
        if close is not None:
            close()


# ---- what the scheduler streams for one token-level request ----


@dataclass(frozen=True)
class TokenLogprobs:
    """An engine's log-probability of a sampled token and the `top` (token id, log-probability)
    alternatives, computed from the model's raw logits (before any sampling transform)."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Token:
    """The next token of the answer (with its log-probabilities when the request asked)."""

    id: int
    logprobs: TokenLogprobs | None = None


@dataclass(frozen=True)
class Finished:
    """The request ended; no event follows."""

    reason: FinishReason


TokenEvent = Token | Queued | Tick | Finished | Failed


class TokenRate:
    """Tokens produced over the last few seconds: the panels' aggregate tok/s. Not thread-safe;
    its owner holds its own lock."""

    def __init__(self, window_s: float = STATS_WINDOW_S) -> None:
        self._window_s = window_s
        self._events: deque[tuple[float, int]] = deque()  # (time, tokens)

    def add(self, tokens: int, now: float) -> None:
        self._events.append((now, tokens))
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        return sum(n for _, n in self._events) / self._window_s

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self._window_s:
            self._events.popleft()
