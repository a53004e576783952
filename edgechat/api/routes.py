"""The routes and the steps that admit a request: auth (a wrong key spends the address's
password tries, edgechat.access.KeyLockout), body (capped, JSON only), checked parameters
(edgechat.openai_schema), what the backend can do (logprobs, structured output:
edgechat.structured), per-address limits (not for programs holding --server-api-key). An admitted
request is answered by edgechat.api.completion; whatever goes wrong is answered by edgechat.api.errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgechat import openai_schema as schema
from edgechat import structured
from edgechat.access import ClientLimits, KeyLockout, client_address, password_ok, shared_limits
from edgechat.api.completion import CacheKey, Completion
from edgechat.api.errors import BUSY_RETRY_AFTER_S, error_response, locked_out, rate_limited
from edgechat.config import Settings
from edgechat.errors import ConfigError
from edgechat.metrics import ServingMetrics, process_metrics
from edgechat.openai_schema import ApiError, ChatCall
from edgechat.runtime import Runtime, current_runtime, shared_runtime
from edgechat.stats import BackendStats
from edgechat.types import Message

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20  # a long conversation is ~100 KB; more is a mistake or an attack
DRAIN_BODY_BYTES = 16 << 20  # an oversized body is read this far so the client sees the 413


def address_of(request: Request, settings: Settings) -> str:
    """The client address limits count against (the page uses the same rule)."""
    return client_address(request.client.host if request.client else None, request.headers, settings.trusted_proxy)


def api_routes(
    settings: Settings,
    *,
    runtime: Callable[[], Runtime] | None = None,
    current: Callable[[], Runtime | None] = current_runtime,
    metrics: ServingMetrics | None = None,
    limits: ClientLimits | None = None,
    page_sessions: Callable[[], int | None] | None = None,
) -> list[Route]:
    """The routes; `runtime` builds (or rebuilds a dead) runtime for an answer, `current` peeks
    without building (probes report, they do not repair); `limits` are the per-address limits the
    page's sessions count against too. Tests pass their own of each."""
    limits = limits or shared_limits(settings.rate_limit, settings.max_in_flight)
    api = OpenAIApi(
        settings, runtime or (lambda: shared_runtime(settings)), current, metrics or process_metrics(), limits
    )
    api.metrics.bind(api.backend_stats, api.backend_info, page_sessions)
    return [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/{rest:path}", api.unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    ]


class OpenAIApi:
    """The handlers, with what they share: settings, the runtime providers, metrics, limits."""

    def __init__(
        self,
        settings: Settings,
        runtime: Callable[[], Runtime],
        current: Callable[[], Runtime | None],
        metrics: ServingMetrics,
        limits: ClientLimits,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.current = current
        self.metrics = metrics
        self.limits = limits
        self.key = settings.server_api_key or settings.password  # None: /v1 is open
        self.program_key = settings.server_api_key  # its holders are programs serving many people
        self.started = int(time.time())
        self.lockout = KeyLockout(limits)
        self._keys_in_flight: set[str] = set()  # touched on the event loop only

    # ---- probes ----

    def backend_stats(self) -> BackendStats | None:
        rt = self.current()
        return None if rt is None else dataclasses.replace(rt.backend.stats(), alive=rt.alive)

    def backend_info(self) -> dict[str, Any] | None:
        rt = self.current()
        return None if rt is None else rt.info

    async def healthz(self, request: Request) -> JSONResponse:
        rt = self.current()
        if rt is None:
            return JSONResponse({"alive": False, "backend": None, "model": None, "status": "loading"}, 503)
        body = {"alive": rt.alive, "backend": rt.info.get("backend"), "model": model_id(rt), "loaded_at": rt.loaded_at}
        return JSONResponse(body, status_code=200 if rt.alive else 503)

    async def prometheus(self, request: Request) -> Response:
        text = await anyio.to_thread.run_sync(self.metrics.exposition)  # stats() takes the scheduler's lock
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    # ---- /v1 ----

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
            rt = await self._runtime()
        except ApiError as err:
            return self._error(err)
        return JSONResponse(schema.model_list(model_id(rt), rt.backend.max_len, self.started))

    async def unknown(self, request: Request) -> Response:
        known = {"/v1/models": "GET", "/v1/chat/completions": "POST"}
        path = request.url.path.rstrip("/")
        if path in known:
            err = ApiError(405, f"{path} takes {known[path]}, not {request.method}")
        elif path == "/v1/completions":
            err = ApiError(404, "this box serves chat models only: use /v1/chat/completions")
        else:
            err = ApiError(
                404, f"unknown endpoint {request.url.path}: this box serves /v1/models and /v1/chat/completions"
            )
        return self._error(err)

    async def chat(self, request: Request) -> Response:
        try:
            program = self._authorize(request)
            call = schema.parse_chat(await self._json(request), self.settings.sampling)
            rt = await self._runtime()
            if call.model is not None and call.model not in served_names(rt):
                served = f"this box serves {model_id(rt)!r} (see /v1/models)"
                raise ApiError(
                    404, f"model {call.model!r} does not exist: {served}", param="model", code="model_not_found"
                )
            call = await self._constrained(call, rt)
            address, release = self._admit(request, program)
        except ApiError as err:
            return self._error(err)
        cache_key = self._cache_key_for(address, call)
        handout = rt.handout if self.settings.handout_api else None  # the room's handout, if the operator shares it
        completion = Completion(rt, model_id(rt), call, release, cache_key, self.metrics, handout)
        try:
            return await completion.respond(request)
        except Exception as err:  # a bug of ours: the caller still gets OpenAI's shape, the log the trace
            await completion.finish()
            log.exception("chat completion failed")
            return self._error(ApiError(500, f"the answer failed ({type(err).__name__}); try again"))
        except BaseException:  # cancelled (server shutting down)
            await completion.finish()
            raise

    # ---- steps of a request ----

    def _authorize(self, request: Request) -> bool:
        """Bearer KEY (--server-api-key, else --password); True when the caller holds the
        --server-api-key (a program, exempt from per-address limits). Wrong keys lock the
        address out for a while (edgechat.access.KeyLockout)."""
        if not self.key:
            return False
        address = address_of(request, self.settings)
        locked = self.lockout.wait(address)
        if locked:
            raise locked_out(locked)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and password_ok(token.strip(), self.key):
            return self.program_key is not None
        wait = self.lockout.wrong_key(address)
        if wait:
            raise locked_out(wait)
        message = "missing or wrong API key: send Authorization: Bearer KEY (--server-api-key, or the page password)"
        raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _json(self, request: Request) -> Any:
        """The body as JSON, declared as such: a `text/plain` or form body is what a web page
        may send across sites without asking (no CORS preflight), so it is refused (vLLM: 415)."""
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, f"Content-Type must be application/json (got {media or 'none'!r})")
        declared = request.headers.get("content-length", "")
        too_big = ApiError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB")
        if declared.isdigit() and int(declared) > DRAIN_BODY_BYTES:
            raise too_big
        body, size = bytearray(), 0
        async for part in request.stream():
            size += len(part)
            if size <= MAX_BODY_BYTES:
                body += part
            elif size > DRAIN_BODY_BYTES:
                break
        if size > MAX_BODY_BYTES:
            raise too_big
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as err:
            raise ApiError(400, f"the body is not valid JSON ({str(err)[:120]})") from None

    async def _runtime(self) -> Runtime:
        """The shared runtime (built, or rebuilt after an engine death, off the event loop)."""
        try:
            rt = await anyio.to_thread.run_sync(self.runtime)
        except ConfigError as err:
            raise ApiError(503, f"the model could not be loaded: {err}") from None
        if not rt.alive:
            raise ApiError(503, "the engine is down; try again in a moment", code="engine_down")
        return rt

    async def _constrained(self, call: ChatCall, rt: Runtime) -> ChatCall:
        """Refuse what the backend cannot do (400 naming the parameter); turn `response_format`
        into the grammar its engine samples with."""
        backend = rt.backend
        if call.sampling.logprobs is not None and not backend.logprobs:
            why = f"the {backend.name} backend cannot report token log-probabilities"
            raise ApiError(400, f"logprobs: {why} (see README, The API)", param="logprobs")
        if call.response_format is None:
            return call
        if not backend.grammar:
            why = f"the {backend.name} backend cannot constrain its output (json_object, json_schema)"
            raise ApiError(400, f"response_format: {why} (see README, The API)", param="response_format")
        try:
            grammar = await anyio.to_thread.run_sync(structured.grammar_for, call.response_format)
        except ValueError as err:
            raise ApiError(400, f"response_format: {err}", param="response_format") from None
        return dataclasses.replace(call, sampling=dataclasses.replace(call.sampling, grammar=grammar))

    def _admit(self, request: Request, program: bool) -> tuple[str, Callable[[], None]]:
        """Count the question against the address's --rate-limit and take one of its
        --max-in-flight slots (page tabs and API calls of one address share them). A program
        holding --server-api-key (Open WebUI, Dify: many people behind one address) is not
        limited per address: the queue bound and --max-running protect the box from it."""
        address = address_of(request, self.settings)
        if program:
            return address, lambda: None
        wait = self.limits.question(address)
        if wait:
            message = (
                f"over {self.limits.rate_limit} questions a minute from this address (--rate-limit); wait {wait} s"
            )
            raise rate_limited(message, wait)
        release = self.limits.acquire(address)
        if release is None:
            n = self.limits.max_in_flight
            message = (
                f"this address already has {n} answers running or waiting (--max-in-flight); try again when one ends"
            )
            raise rate_limited(message, BUSY_RETRY_AFTER_S)
        return address, release

    def _cache_key_for(self, address: str, call: ChatCall) -> CacheKey:
        """The KV-cache key of this conversation, so its next turn reuses what this one read.
        An API call carries its whole history, and the history's start (system prompt and first
        question) stays the same from turn to turn, so that start and the caller's address name
        the conversation; the scheduler keeps only the token prefix the new prompt really shares.
        A key can serve one answer at a time: a second at once (a regenerate racing the first)
        gets a key of its own that is forgotten when it ends."""
        head: list[Message] = []
        for m in call.messages:
            head.append(m)
            if m["role"] == "user":
                break
        digest = hashlib.sha256(json.dumps([address, head], ensure_ascii=False).encode()).hexdigest()
        key = "api:" + digest[:32]
        if key in self._keys_in_flight:
            return CacheKey(self._keys_in_flight, "api-once:" + uuid.uuid4().hex, keep=False)
        self._keys_in_flight.add(key)
        return CacheKey(self._keys_in_flight, key, keep=True)

    def _error(self, err: ApiError) -> JSONResponse:
        return error_response(err, self.metrics)


def model_id(rt: Runtime) -> str:
    """The id /v1/models lists: the model's name (the GGUF's stem, the remote server's id)."""
    return str(rt.info.get("model_name") or rt.info.get("backend") or "edgechat")


def served_names(rt: Runtime) -> set[str]:
    names = {model_id(rt)}
    if rt.backend.name == "openai" and rt.info.get("model"):
        names.add(str(rt.info["model"]))  # a remote server's full id (org/name)
    return names
