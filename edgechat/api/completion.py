"""One admitted chat completion, from its first event to its clean-up: the status its first
event decides (a refusal is a 429/400/503, anything else a 200), the whole JSON answer or the SSE
stream, and the clean-up that runs exactly once however the request ends (answered, refused, hung
up). The routes (edgechat.api) admit a request and hand it here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import chain
from typing import Any

import anyio
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgechat import openai_schema as schema
from edgechat.api.errors import error_response, failure_error
from edgechat.client import ChatClient
from edgechat.metrics import ServingMetrics
from edgechat.openai_schema import ChatCall
from edgechat.reasoning import REASONING, ReasoningStream, split_reasoning
from edgechat.runtime import Runtime
from edgechat.types import (
    ChatEvent,
    Done,
    Failed,
    Generation,
    Queued,
    Text,
    Tick,
    Trimmed,
    TurnStats,
)

KEEPALIVE = b": waiting\n\n"  # an SSE comment while queued: clients ignore it, a hang-up shows


class Completion:
    """One admitted chat completion: its ChatClient, its events, and the clean-up that runs
    exactly once however the request ends (answered, refused, hung up). Errors are counted in
    `metrics`."""

    def __init__(
        self,
        rt: Runtime,
        model: str,
        call: ChatCall,
        release: Callable[[], None],
        cache_key: CacheKey,
        metrics: ServingMetrics,
        handout: str | None = None,
    ) -> None:
        """`handout`: the room's --handout, when the operator shares it with the API (--handout-api)."""
        self.rt = rt
        self.call = call
        self.release = release
        self.cache_key = cache_key
        self.metrics = metrics
        self.model = model
        self.client = ChatClient(
            rt.backend, rt.tokenizer, sampling=call.sampling, cache_key=cache_key.key, source="api", handout=handout
        )
        self.generation = Generation(iter(()))  # until start(): nothing to cancel yet
        self._finished = False

    def start(self) -> None:
        """Fit the history and submit (templates and tokenizing: kept off the event loop)."""
        call = self.call
        self.generation = self.client.stream(call.messages, call.sampling, call.continue_last, trim=call.truncate)

    async def respond(self, request: Request) -> Response:
        await anyio.to_thread.run_sync(self.start)
        first = await self._watching(request, self._first)
        if first and isinstance(first[-1], Failed):  # refused, or broke before its first word: a status says why
            await self.finish()
            return error_response(failure_error(first[-1], self.rt.alive), self.metrics)
        if self.call.stream:
            return _Stream(self._sse(first), self.finish, self.generation.cancel)
        rest = await self._watching(request, lambda: list(self.generation))
        await self.finish()
        events = [*first, *rest]
        failed = next((e for e in events if isinstance(e, Failed)), None)
        done = next((e for e in events if isinstance(e, Done)), None)
        if failed is not None:
            return error_response(failure_error(failed, self.rt.alive), self.metrics)
        stats = done.stats if done is not None else TurnStats()
        texts = [e for e in events if isinstance(e, Text)]
        tokens = [t for e in texts for t in e.logprobs]
        text = "".join(e.text for e in texts)
        chat = self.rt.tokenizer
        reasoning, answer = split_reasoning(text, chat.opens_reasoning) if chat and chat.reasoning else ("", text)
        body = schema.completion(self.call, self.model, answer, stats, tokens)
        if reasoning:  # a reasoning model's <think> part, as vLLM's reasoning parsers send it
            body["choices"][0]["message"][REASONING] = reasoning
        return JSONResponse(body)

    def _first(self) -> list[ChatEvent]:
        """Events up to the first that tells accepted from refused (anything but Trimmed)."""
        seen: list[ChatEvent] = []
        for event in self.generation:
            seen.append(event)
            if not isinstance(event, Trimmed):
                break
        return seen

    async def _watching(self, request: Request, work: Callable[[], list[ChatEvent]]) -> list[ChatEvent]:
        """`work` in a thread while watching for the client hanging up, which cancels the answer
        (the work then ends within a step, with the answer's Done)."""
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                self.generation.cancel()

            group.start_soon(watch)
            result = await anyio.to_thread.run_sync(work)
            group.cancel_scope.cancel()
        return result

    async def _sse(self, first: list[ChatEvent]) -> AsyncIterator[bytes]:
        call, model = self.call, self.model
        yield _sse(schema.chunk(call, model, {"role": "assistant", "content": ""}))
        failed: Failed | None = None
        stats = TurnStats()
        chat = self.rt.tokenizer
        split = ReasoningStream(chat.opens_reasoning) if chat and chat.reasoning else None
        async for event in iterate_in_threadpool(chain(first, self.generation)):
            if isinstance(event, Text) and split is None:
                yield _sse(schema.chunk(call, model, {"content": event.text}, tokens=event.logprobs))
            elif isinstance(event, Text):  # a reasoning model's think part as vLLM streams it
                for key, piece in split.feed(event.text):
                    yield _sse(schema.chunk(call, model, {key: piece}))
            elif isinstance(event, (Queued, Tick)):
                yield KEEPALIVE
            elif isinstance(event, Failed):
                failed = event
            elif isinstance(event, Done):
                stats = event.stats
                for key, piece in split.flush() if split is not None else ():
                    yield _sse(schema.chunk(call, model, {key: piece}))
        if failed is not None:
            err = failure_error(failed, self.rt.alive)
            self.metrics.api_error(err.status)
            yield _sse(err.body())
        else:
            yield _sse(schema.chunk(call, model, {}, schema.finish_reason(stats.finish_reason)))
            if call.include_usage:
                yield _sse(schema.chunk(call, model, {}, last_usage=stats))
        yield b"data: [DONE]\n\n"

    async def finish(self) -> None:
        """Cancel (a no-op once ended), read the answer to its Done so it is counted, give back
        the cache key and the address's slot. Shielded: it runs to the end even when the
        request was cancelled."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            self.generation.cancel()
            await anyio.to_thread.run_sync(_drain, self.generation)
            self.cache_key.end(self.rt)
            self.release()


class CacheKey:
    """A conversation's cache key while one answer uses it; `in_flight` holds the keys in use
    (touched on the event loop only)."""

    def __init__(self, in_flight: set[str], key: str, keep: bool) -> None:
        self.in_flight, self.key, self.keep = in_flight, key, keep

    def end(self, rt: Runtime) -> None:
        if self.keep:
            self.in_flight.discard(self.key)
        else:
            rt.backend.forget_cache(self.key)


class _Stream(StreamingResponse):
    """An SSE answer whose clean-up runs however the response ends: Starlette cancels the body
    on a client disconnect, and may never start it if the client left before the headers."""

    def __init__(self, body: AsyncIterator[bytes], finish: Callable[[], Any], hung_up: Callable[[], None]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._finish = finish
        self._hung_up = hung_up

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, self._watch(receive), send)
        finally:
            await self._finish()

    def _watch(self, receive: Any) -> Any:
        """`receive` that cancels the answer the moment the client hangs up, not when the body
        iterator next wakes (that waits for the next token)."""

        async def watched() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._hung_up()
            return message

        return watched


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _drain(events: Iterable[ChatEvent]) -> None:
    for _ in events:
        pass
