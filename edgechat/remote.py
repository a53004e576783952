"""The remote Backend (chat-level, not a token engine): an OpenAI-compatible server (vLLM,
llama.cpp server, Ollama) renders the chat template, tokenizes and batches; this module streams
`/v1/chat/completions` for each turn.

It implements the same Backend protocol as the local scheduler (edgechat/backend.py), so the
client above cannot tell them apart. There is no scheduler on this path: every session's turn is
its own HTTP stream through the official `openai` client, and the server does the batching.
Cancelling a turn (Stop, a closed tab) closes its HTTP stream, which is how these servers learn
to stop generating.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import httpx2
import openai

from edgechat.errors import ConfigError
from edgechat.stats import BackendStats
from edgechat.types import (
    ChatEvent,
    ChatRequest,
    Done,
    Failed,
    FailKind,
    FinishReason,
    Generation,
    Message,
    RequestStats,
    Text,
    TokenRate,
    TurnStats,
)

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0  # the page waits for this at most, once per HEALTH_TTL_S
HEALTH_TTL_S = 5.0
# Prompt sizes are estimated from characters: the server tokenizes, and a round trip per turn to
# count tokens is not worth it. 2 characters a token is safe for English (~4) and close for Chinese
# (~1.5 with Baichuan2's vocabulary); a prompt that still does not fit gets the server's own 400.
CHARS_PER_TOKEN = 2
TOKENS_PER_MESSAGE = 4  # the turn markers a chat template wraps around each message
NO_KEY = "none"  # the openai client insists on a key; servers without auth ignore it
# uvicorn (vLLM, Streamlit, edgechat's own API) and llama.cpp's server close a keep-alive
# connection after 5 s idle, and httpx keeps one 5 s too: a request sent on it just as the server
# closes it fails with "Connection error" and is not retried (see max_retries below), so the
# person's turn is lost. Idle connections are dropped well before any of those servers would; a
# new connection on a LAN costs about a millisecond.
IDLE_CONNECTION_S = 2.0


def openai_client(base_url: str, api_key: str | None, timeout: float | httpx2.Timeout) -> openai.OpenAI:
    """The official client, with no retries and idle connections dropped before the server drops them."""
    pool = openai.DEFAULT_CONNECTION_LIMITS
    limits = httpx2.Limits(
        max_connections=pool.max_connections,
        max_keepalive_connections=pool.max_keepalive_connections,
        keepalive_expiry=IDLE_CONNECTION_S,
    )
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key or NO_KEY,
        max_retries=0,  # a retry would double a request the person is waiting on; they can resend
        timeout=timeout,  # sent with every request: the HTTP client's own default is never used
        http_client=openai.DefaultHttpxClient(limits=limits),
    )


class RemoteBackend:
    """One OpenAI-compatible endpoint shared by every session of the process."""

    name = "openai"
    # Not passed on: the server behind may lack them (the TPU's does), and its logprobs and grammar
    # would have to be re-checked and re-shaped chunk by chunk. The API refuses them (400) instead.
    logprobs = False
    grammar = False

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model_name: str | None = None,
        context_length: int,
        request_timeout: float | None,
    ) -> None:
        self.base_url = base_url
        self.max_len = context_length
        self.max_prompt_len = context_length
        self.request_timeout = request_timeout
        # No defaults here: --context-length and --request-timeout (config.py) give them. The deadline
        # also bounds each read, as a busy vLLM may hold a request in its queue that long; None: neither.
        self._client = openai_client(base_url, api_key, httpx2.Timeout(request_timeout, connect=CONNECT_TIMEOUT_S))
        self._lock = threading.Lock()
        self._running = 0
        self._rate = TokenRate()  # streamed chunks, for aggregate tok/s
        self._health: tuple[float, str] = (0.0, "")
        self._health_check = threading.Lock()  # one /v1/models round trip at a time
        self.model_name = model_name or self._served_model()

    def _served_model(self) -> str:
        """The first model in /v1/models; read once at start-up so a wrong URL fails early."""
        try:
            models = self._client.models.list().data
        except (openai.APIError, httpx2.HTTPError) as err:
            raise ConfigError(describe_error(err, self.base_url, None)) from None
        if not models:
            raise ConfigError(f"--base-url {self.base_url}: the server lists no model; start it with one")
        return models[0].id

    def prompt_size(self, messages: Sequence[Message], continue_last: bool = False) -> int:
        """An estimate from characters (see CHARS_PER_TOKEN)."""
        chars = sum(len(m["content"]) for m in messages)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)

    def generate(self, request: ChatRequest) -> Generation:
        turn = _RemoteTurn(self, request)
        return Generation(turn.events(), turn.cancel)

    def health(self) -> str:
        """One line for the page's server panel: a `/v1/models` round trip, cached for a few
        seconds so many open pages cost the server one cheap request. The round trip runs outside
        the lock every streamed chunk takes, so a slow server never stalls the answers; pages that
        ask meanwhile get the previous line."""
        with self._lock:
            checked, line = self._health
            if time.monotonic() - checked < HEALTH_TTL_S or not self._health_check.acquire(blocking=False):
                return line or "checking the server…"
        try:
            start = time.monotonic()
            try:
                ids = [m.id for m in self._client.with_options(timeout=HEALTH_TIMEOUT_S).models.list().data]
                ok = self.model_name in ids
                line = f"server up · {1000 * (time.monotonic() - start):.0f} ms" + (
                    "" if ok else f" · but it does not list {self.model_name!r}"
                )
            except (openai.APIError, httpx2.HTTPError) as err:
                line = f"server down: {describe_error(err, self.base_url, self.model_name)}"
            with self._lock:
                self._health = (time.monotonic(), line)
            return line
        finally:
            self._health_check.release()

    def stats(self) -> BackendStats:
        """This process's view (the server's queue is its own): streams open, recent tok/s."""
        with self._lock:
            return BackendStats(running=self._running, aggregate_tps=self._rate.per_second(time.monotonic()))

    @property
    def alive(self) -> bool:
        return True  # nothing of ours can die here; the server's own health is health()

    def forget_cache(self, cache_key: str) -> None:
        """New chat: nothing to drop here; the server's prefix cache is the server's business."""

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_name,
            "model_name": PurePosixPath(self.model_name).name or self.model_name,  # vLLM ids are org/name
            "device": f"OpenAI-compatible server at {self.base_url}",
            "context_length": self.max_len,
            "template": "the server's",
        }

    def close(self) -> None:
        self._client.close()

    def _count(self, running: int = 0, chunks: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._running += running
            if chunks:
                self._rate.add(chunks, now)


class _RemoteTurn:
    """One answer streamed from the server. `cancel()` may come from another thread: it closes
    the HTTP stream, which ends the iteration with the figures of what arrived."""

    def __init__(self, backend: RemoteBackend, request: ChatRequest) -> None:
        self._backend = backend
        self._request = request
        self._cancelled = threading.Event()
        self._stream: Any = None
        self.stats = RequestStats(submitted_at=time.monotonic())

    def cancel(self) -> None:
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def events(self) -> Iterator[ChatEvent]:
        backend, stats = self._backend, self.stats
        deadline = None if backend.request_timeout is None else stats.submitted_at + backend.request_timeout
        chunks, usage_tokens, error, kind = 0, None, None, FailKind.ERROR
        backend._count(running=1)
        try:
            self._stream = backend._client.chat.completions.create(**self._arguments())
            stats.started_at = stats.submitted_at  # the server's own queue is not visible from here
            for chunk in self._stream:
                if chunk.usage is not None:
                    usage_tokens = chunk.usage.completion_tokens
                    stats.prompt_tokens = chunk.usage.prompt_tokens
                choice = chunk.choices[0] if chunk.choices else None
                if choice is not None and choice.delta.content:
                    if stats.first_token_at is None:
                        stats.first_token_at = time.monotonic()
                    chunks += 1
                    backend._count(chunks=1)
                    yield Text(choice.delta.content)
                if choice is not None and choice.finish_reason:
                    stats.finish_reason = FinishReason.LENGTH if choice.finish_reason == "length" else FinishReason.STOP
                if self._cancelled.is_set():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    error = f"stopped after {backend.request_timeout:g} s (--request-timeout)"
                    stats.finish_reason = FinishReason.TIMEOUT
                    break
            if self._cancelled.is_set():
                stats.finish_reason = FinishReason.CANCELLED
            elif stats.finish_reason is None:  # llama.cpp fails a too-long prompt this way, after the 200
                error = "the model server ended the answer without finishing it (a prompt too long?); try again"
                stats.finish_reason = FinishReason.ERROR
        except (openai.APIError, httpx2.HTTPError) as err:
            if self._cancelled.is_set():  # our own close() broke the read
                stats.finish_reason = FinishReason.CANCELLED
            else:
                error = describe_error(err, backend.base_url, backend.model_name, midway=chunks > 0)
                kind = error_kind(err)
                stats.finish_reason = FinishReason.ERROR
        finally:
            if self._stream is not None:
                self._stream.close()  # Stop / closed tab: the server sees the disconnect and stops
            backend._count(running=-1)
            stats.finished_at = time.monotonic()
            # Servers that send usage (vLLM with include_usage) count tokens; otherwise one chunk
            # is one token, which is what vLLM, llama.cpp and Ollama stream.
            stats.completion_tokens = usage_tokens if usage_tokens is not None else chunks
        if error is not None:
            yield Failed(error, refused=chunks == 0, kind=kind)
        yield Done(TurnStats.measured(stats, error=error))

    def _arguments(self) -> dict[str, Any]:
        s = self._request.sampling
        # Not in OpenAI's API: vLLM reads top_k/repetition_penalty, llama.cpp top_k/repeat_penalty,
        # and both ignore the other's name. top_k 0 (off) is left to the server's default.
        extra: dict[str, Any] = {
            **({"top_k": s.top_k} if s.top_k > 0 else {}),
            "repetition_penalty": s.repetition_penalty,
            "repeat_penalty": s.repetition_penalty,
        }
        if self._request.continue_last:  # vLLM's names; llama.cpp's server continues a final assistant turn itself
            extra.update(continue_final_message=True, add_generation_prompt=False)
        arguments: dict[str, Any] = {
            "model": self._backend.model_name,
            "messages": list(self._request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},  # exact token counts where the server sends them
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "seed": s.seed,
            "extra_body": extra,
        }
        if s.stop:
            arguments["stop"] = list(s.stop)
        if s.frequency_penalty:
            arguments["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty:
            arguments["presence_penalty"] = s.presence_penalty
        return arguments


def describe_error(err: Exception, base_url: str, model: str | None, midway: bool = False) -> str:
    """One line a person can act on, for every way a remote turn fails."""
    kept = " (the answer so far is kept)" if midway else ""
    if midway and isinstance(err, (openai.APIConnectionError, httpx2.HTTPError)):
        cause = err.__cause__ or err
        return f"the connection to the model server broke mid-answer ({cause}){kept}; try again"
    if isinstance(err, openai.APITimeoutError):
        return f"the model server at {base_url} did not answer in time{kept}; it may be overloaded — try again"
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err
        return f"cannot connect to the model server at {base_url} ({cause}); is it running? check --base-url"
    if isinstance(err, openai.AuthenticationError):
        return f"the model server at {base_url} refused the API key (401): set --api-key or EDGECHAT_API_KEY"
    if isinstance(err, openai.PermissionDeniedError):
        return f"the API key may not use this model server (403): {_server_message(err)}"
    if isinstance(err, openai.NotFoundError) and model is None:
        return f"the model server at {base_url} answered 404 for its model list: is --base-url its /v1 root?"
    if isinstance(err, openai.NotFoundError):
        return (
            f"the model server at {base_url} answered 404 for model {model!r}: check --model-name (or leave "
            "it out to use the server's first model) and that --base-url is the server's /v1 root"
        )
    if isinstance(err, openai.RateLimitError):
        return "the model server is busy (429, rate limited): try again in a moment"
    if isinstance(err, openai.APIStatusError):
        if err.status_code >= 500:
            return f"the model server failed ({err.status_code}): {_server_message(err)}; try again"
        return f"the model server rejected the request ({err.status_code}): {_server_message(err)}"
    if isinstance(err, httpx2.HTTPError):
        return f"the connection to the model server at {base_url} failed ({err}); try again"
    return f"the model server reported an error{kept}: {err}"


def error_kind(err: Exception) -> FailKind:
    """What the person (or a program calling our API) can do about a failed remote turn."""
    if isinstance(err, openai.RateLimitError):
        return FailKind.BUSY
    if isinstance(err, (openai.APIConnectionError, httpx2.HTTPError)):
        return FailKind.UNAVAILABLE  # includes timeouts
    if isinstance(err, openai.APIStatusError) and err.status_code >= 500:
        return FailKind.UNAVAILABLE
    if isinstance(err, openai.BadRequestError):
        return FailKind.BAD_REQUEST  # a prompt too long for the server lands here too
    return FailKind.ERROR


def _server_message(err: openai.APIStatusError, limit: int = 200) -> str:
    """The server's own words: OpenAI and vLLM put them in error.message (the client unwraps
    `error`), FastAPI servers in detail."""
    body = err.body
    text = (body.get("message") or body.get("detail")) if isinstance(body, dict) else body
    text = str(text or err.message).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
