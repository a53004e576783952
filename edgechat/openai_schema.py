"""The OpenAI chat-completions wire format: request bodies checked into plain edgechat types, and
the JSON shapes of answers, stream chunks and errors.

Kept apart from the routes (edgechat/api.py) so the rules can be read and tested without a server.
Parameters take the bounds the settings declare (edgechat/config.py), so the API accepts exactly
what the page's sliders and the flags accept; unknown fields are ignored, as vLLM does, so
clients that send extras (Open WebUI, Dify) work unchanged.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgechat.config import options
from edgechat.types import FinishReason, Logprob, Message, SamplingParams, TurnStats

MAX_STOP = 16  # stop strings per request (OpenAI allows 4; vLLM any)
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI, vLLM and llama.cpp's server allow
ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error answered in OpenAI's JSON error shape with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             503: "server_error"}  # fmt: skip

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatCall:
    """One checked /v1/chat/completions request."""

    model: str | None
    messages: list[Message]
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    continue_last: bool = False  # vLLM's continue_final_message: go on with the last assistant message
    truncate: bool = False  # edgechat's own: drop the oldest turns to fit instead of a 400
    response_format: dict[str, Any] | None = None  # json_object / json_schema, checked; None = text
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))


def parse_chat(body: Any, defaults: SamplingParams) -> ChatCall:
    """The request in `body` (parsed JSON) as a ChatCall, or ApiError(400) naming the field.
    `defaults` are the operator's settings; `max_tokens` is capped at its max_new_tokens."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    messages = _messages(body.get("messages"))
    n = _integer(body, "n", low=1)
    if n not in (None, 1):
        raise ApiError(400, "n must be 1: this server answers one choice per request", param="n")
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    include_usage = _flag(stream_options or {}, "include_usage", "stream_options.include_usage")
    continue_last = _flag(body, "continue_final_message")
    if continue_last and messages[-1]["role"] != "assistant":
        raise ApiError(400, "continue_final_message needs an assistant message last", param="messages")
    return ChatCall(
        model=model or None,
        messages=messages,
        sampling=sampling_of(body, defaults),
        stream=stream,
        include_usage=stream and include_usage,
        continue_last=continue_last,
        truncate=_flag(body, "truncate"),
        response_format=_response_format(body.get("response_format")),
    )


def sampling_of(body: dict[str, Any], defaults: SamplingParams) -> SamplingParams:
    """OpenAI's parameter names onto SamplingParams, within the settings' bounds."""
    changes: dict[str, Any] = {}
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = _bounded(body, name)
        if value is not None:
            changes[name] = float(value)
    top_k = _integer(body, "top_k", low=-1)
    if top_k is not None:
        changes["top_k"] = int(_bounded({"top_k": max(top_k, 0)}, "top_k") or 0)  # vLLM's "off" is -1, ours 0
    for name in ("frequency_penalty", "presence_penalty"):
        value = _real(body, name, -2.0, 2.0)
        if value is not None:
            changes[name] = value
    max_tokens = _integer(body, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", low=1)
    changes["max_new_tokens"] = min(max_tokens or defaults.max_new_tokens, defaults.max_new_tokens)
    seed = _integer(body, "seed")
    changes["seed"] = secrets.randbits(32) if seed is None else seed  # no seed: a new answer each time
    changes["stop"] = _stop(body.get("stop"))
    changes["logprobs"] = _logprobs(body)
    return replace(defaults, **changes)


def _logprobs(body: dict[str, Any]) -> int | None:
    """OpenAI's `logprobs` (true/false) and `top_logprobs` (0..20, needs logprobs true)."""
    wanted = _flag(body, "logprobs")
    top = _integer(body, "top_logprobs", low=0)
    if top is not None and top > MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs must be <= {MAX_TOP_LOGPROBS} (got {top})", param="top_logprobs")
    if top is not None and not wanted:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (top or 0) if wanted else None


def _response_format(raw: Any) -> dict[str, Any] | None:
    """`{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}`:
    the shape checked here; whether the schema makes a grammar is the engine's converter's call."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            param = "response_format.json_schema.schema"
            raise ApiError(400, f"{param} must be a JSON schema object", param=param)
        return {"type": "json_schema", "schema": schema}
    raise ApiError(400, "response_format.type must be text, json_object or json_schema", param="response_format")


def _messages(raw: Any) -> list[Message]:
    if raw is None:
        raise ApiError(400, "messages is required: a list of {role, content}", param="messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", param="messages")
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", param=where)
        role = ROLE_ALIASES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise ApiError(
                400, f"{where}.role must be system, user or assistant (got {m.get('role')!r})", param=where + ".role"
            )
        out.append(Message(role=role, content=_content(m.get("content"), role, where + ".content")))
    return out


def _content(raw: Any, role: str, where: str) -> str:
    """A string, or a list of text parts (joined with newlines, as vLLM does)."""
    if isinstance(raw, str):
        return raw
    if raw is None and role == "assistant":
        return ""
    if isinstance(raw, list):
        texts = []
        for j, part in enumerate(raw):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                shown = kind if isinstance(kind, str) else type(part).__name__
                raise ApiError(
                    400, f"{where}[{j}]: this model reads text only (content part {shown!r})", param=f"{where}[{j}]"
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(items) > MAX_STOP:
        raise ApiError(400, f"stop takes at most {MAX_STOP} strings", param="stop")
    return tuple(s for s in items if s)


def _flag(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or name} must be true or false", param=param or name)
    return value


def _real(body: dict[str, Any], name: str, low: float | None = None, high: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"{name} must be between {low:g} and {high:g} (got {value:g})", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer", param=name)
    if low is not None and value < low:
        raise ApiError(400, f"{name} must be >= {low} (got {value})", param=name)
    return value


def _bounded(body: dict[str, Any], name: str) -> float | None:
    """A number within the bounds its setting declares (the flag's and the page's)."""
    value = _real(body, name)
    if value is None:
        return None
    o = options()[name]
    if o.minimum is not None and value < o.minimum:
        raise ApiError(400, f"{name} must be >= {o.minimum:g} (got {value:g})", param=name)
    if o.above is not None and value <= o.above:
        raise ApiError(400, f"{name} must be > {o.above:g} (got {value:g})", param=name)
    if o.maximum is not None and value > o.maximum:
        raise ApiError(400, f"{name} must be <= {o.maximum:g} (got {value:g})", param=name)
    return value


# ---- answers ----


def finish_reason(reason: FinishReason | None) -> str:
    """OpenAI knows stop and length; a --request-timeout cut is a length cut (a time budget)."""
    return "length" if reason in (FinishReason.LENGTH, FinishReason.TIMEOUT) else "stop"


def usage(stats: TurnStats) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }
    if stats.reused_tokens or stats.shared_tokens:  # from the conversation's own cache or another's
        body["prompt_tokens_details"] = {"cached_tokens": stats.reused_tokens + stats.shared_tokens}
    return body


def logprobs(call: ChatCall, tokens: Sequence[Logprob]) -> dict[str, Any] | None:
    """OpenAI's `choices[].logprobs` for these tokens; None when the request did not ask."""
    if call.sampling.logprobs is None:
        return None
    content = [{**_piece(t.token, t.logprob), "top_logprobs": [_piece(b, lp) for b, lp in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def _piece(raw: bytes, logprob: float) -> dict[str, Any]:
    """A token as OpenAI shows it; -inf (a token the grammar forbade) as vLLM writes it."""
    return {"token": raw.decode("utf-8", "replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}


def completion(
    call: ChatCall, model: str, text: str, stats: TurnStats, tokens: Sequence[Logprob] = ()
) -> dict[str, Any]:
    """A whole answer (stream false)."""
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs(call, tokens),
                "finish_reason": finish_reason(stats.finish_reason),
            }
        ],
        "usage": usage(stats),
    }


def chunk(
    call: ChatCall,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    *,
    last_usage: TurnStats | None = None,
    tokens: Sequence[Logprob] | None = None,
) -> dict[str, Any]:
    """One stream chunk; with include_usage every chunk says `usage: null` and a last one with
    no choices carries the figures, as OpenAI sends them."""
    out: dict[str, Any] = {"id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": model}
    if last_usage is not None:
        out["choices"] = []
        out["usage"] = usage(last_usage)
        return out
    lp = None if tokens is None else logprobs(call, tokens)
    out["choices"] = [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]
    if call.include_usage:
        out["usage"] = None
    return out


def model_list(model: str, context_length: int | None, created: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model, "object": "model", "created": created, "owned_by": "edgechat"}
    if context_length:
        entry["max_model_len"] = context_length  # vLLM's field: clients size their history with it
    return {"object": "list", "data": [entry]}
