"""How a request that goes wrong is answered: OpenAI's error body (`openai_schema.ApiError`) with
the status a program can act on, counted in /metrics. One place maps an answer's failure kind to a
status, for the whole JSON answer, the SSE stream's last event and a refusal before the first word.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from edgechat.metrics import ServingMetrics
from edgechat.openai_schema import ApiError
from edgechat.types import Failed, FailKind

BUSY_RETRY_AFTER_S = 2  # the queue moves every answer; ask again soon


def failure_error(failed: Failed, alive: bool) -> ApiError:
    """The error for an answer that failed: busy 429, too long or bad 400, a dead engine 503
    (whatever the failure said, once the runtime is no longer `alive`), else 500."""
    kind = FailKind.UNAVAILABLE if not alive else failed.kind
    if kind is FailKind.BUSY:
        return ApiError(429, failed.message, code="server_busy", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    if kind is FailKind.TOO_LONG:
        return ApiError(400, failed.message, param="messages", code="context_length_exceeded")
    if kind is FailKind.BAD_REQUEST:
        return ApiError(400, failed.message, param="messages")
    if kind is FailKind.UNAVAILABLE:
        return ApiError(503, failed.message, code="engine_down")
    return ApiError(500, failed.message)


def rate_limited(message: str, wait: int) -> ApiError:
    """A per-address limit said no (questions a minute, answers at once, wrong keys): 429 with
    the seconds to wait."""
    return ApiError(429, message, code="rate_limit_exceeded", headers={"Retry-After": str(wait)})


def locked_out(wait: int) -> ApiError:
    return rate_limited("too many wrong API keys from this address; wait and try again", wait)


def error_response(err: ApiError, metrics: ServingMetrics) -> JSONResponse:
    """`err` as OpenAI's JSON error body, counted under its status."""
    metrics.api_error(err.status)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
