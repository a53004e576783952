"""HTTP routes for programs on the LAN, on the page's own port: /healthz (more to come: /v1, /metrics)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgechat.config import Settings
from edgechat.runtime import shared_runtime


def api_routes(settings: Settings) -> list[Any]:
    async def healthz(request: Request) -> JSONResponse:
        runtime = shared_runtime(settings)
        body = {"alive": runtime.alive, "backend": runtime.info.get("backend"), "model": runtime.info.get("model_name")}
        return JSONResponse(body, status_code=200 if runtime.alive else 503)

    return [Route("/healthz", healthz)]
