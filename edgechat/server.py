"""What `streamlit run web_demo.py` serves besides the page, on the same port: routes for
programs (edgechat.api), and the middleware a LAN box needs in front of everything.

web_demo.py hands `app_options(settings)` to `st.App`; Streamlit then runs the page and these
routes in one uvicorn server, so the page, the API and the metrics share one runtime.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from edgechat.config import Settings
from edgechat.errors import ConfigError
from edgechat.owner import OwnerCookieMiddleware
from edgechat.runtime import current_runtime, shared_runtime
from edgechat.stats import BackendStats

log = logging.getLogger(__name__)
LOAD_PATH = "/_edgechat/load"  # the server panel's load line, fetched by every open page once a second
PROGRAM_PATHS = ("/v1/", "/metrics", "/healthz", LOAD_PATH)  # called by programs and scripts: no owner cookie
STREAMLIT_METRICS = "/_stcore/metrics"  # Streamlit's own, always registered; not for the whole LAN


def allowed_hosts(settings: Settings) -> list[str]:
    """The names people and programs use to reach this box: `--allowed-hosts`, or this machine's
    own names and addresses. A Host header outside them (a DNS-rebinding page) gets 400."""
    if settings.allowed_hosts.strip():
        return [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    return box_names()


def box_names() -> list[str]:
    """This machine's own names and addresses (loopback, host name, LAN addresses); also the
    names a self-signed certificate is made for (edgechat.tls)."""
    names = {"localhost", "127.0.0.1", "::1"}
    hostname = socket.gethostname()
    names |= {hostname, f"{hostname}.local", socket.getfqdn()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
    except OSError:
        pass
    from streamlit import config, net_util

    names |= {ip for ip in (net_util.get_internal_ip(), config.get_option("server.address")) if ip}
    return sorted(names)


class LoopbackOnly:
    """Streamlit's /_stcore/metrics (cache sizes, session counts) answers loopback clients only:
    /metrics is the box's own, curated view for the LAN."""

    def __init__(self, app: Any, *, paths: tuple[str, ...] = (STREAMLIT_METRICS,)) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "") in self.paths and not _loopback(scope):
            await PlainTextResponse("not found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class UntrustForwardedFor:
    """The peer address as the connection gave it, whatever X-Forwarded-For says. uvicorn (which
    Streamlit serves through, with no setting for this) replaces a request's client address with
    X-Forwarded-For's whenever the peer is in its `forwarded_allow_ips`, loopback by default, before
    any of our code runs: a local tunnel or proxy passing the header on would name any address it
    likes and dodge the per-address limits. Whom to believe is decided in one place,
    edgechat.access.client_address with --trusted-proxy, so this puts the peer back. uvicorn's own
    rule (its _TrustedHosts, same setting) tells a rewritten scope: its client is exactly the address
    uvicorn derives from the header (a real peer never has that address with port 0)."""

    def __init__(self, app: Any) -> None:
        from uvicorn.middleware.proxy_headers import _TrustedHosts

        self.app = app
        self.uvicorn_trusts = _TrustedHosts(os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            forwarded = b", ".join(v for k, v in scope.get("headers", ()) if k == b"x-forwarded-for")
            if forwarded and scope.get("client"):
                derived = self.uvicorn_trusts.get_trusted_client_address(forwarded.decode("latin1"))
                if derived[0] and tuple(scope["client"]) == tuple(derived):
                    server = (scope.get("server") or ("",))[0] or ""
                    scope = {**scope, "client": ("::1" if ":" in server else "127.0.0.1", 0)}
        await self.app(scope, receive, send)


class ProgramCors:
    """CORS for the program paths only (the page is Streamlit's own), for operators who serve a
    browser-based client from another origin (--cors-origins). Answered as llama.cpp's server
    does: a preflight gets 200 with the asking origin echoed (never a bare `*`), any header and
    the methods /v1 takes allowed. Without the flag no CORS header is sent at all."""

    def __init__(self, app: Any, *, origins: list[str]) -> None:
        self.app = app
        anyone = "*" in origins
        self.cors = CORSMiddleware(
            app,
            allow_origins=[] if anyone else origins,
            allow_origin_regex=".*" if anyone else None,  # echo the origin rather than `*`
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            max_age=600,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(PROGRAM_PATHS):
            await self.cors(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _loopback(scope: dict[str, Any]) -> bool:
    client = scope.get("client") or ("", 0)
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def page_sessions_open() -> int | None:
    """Browser sessions connected now (Streamlit's own active_sessions stat), for /metrics."""
    from streamlit import runtime

    if not runtime.exists():
        return None
    stats = runtime.get_instance().stats_mgr.get_stats(["active_sessions"]).get("active_sessions", ())
    return int(sum(stat.value for stat in stats))


def load_figures(stats: BackendStats) -> dict[str, int | float]:
    """The load line's three numbers from the backend's stats: the page draws them at each run and
    LOAD_PATH serves them between runs."""
    return {"running": stats.running + stats.prefilling, "waiting": stats.waiting, "tps": stats.aggregate_tps}


async def room_load(request: Request) -> JSONResponse:
    """Answers generating, waiting and the engine's tok/s, for the server panel's load line. Every
    open page fetches it once a second (edgechat.page.sidebar): an HTTP request on the event loop
    instead of a script run per page per second, and no fragment rerun that could preempt the end
    of a page's run (issue 23)."""
    runtime = current_runtime()
    try:
        stats = runtime.backend.stats() if runtime is not None else BackendStats()
    except Exception:  # noqa: BLE001 — a dead engine: the panel keeps its last line
        return JSONResponse({"error": "engine unavailable"}, status_code=503)
    body = load_figures(stats)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def app_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `st.App`: routes, middleware and a lifespan that loads the model at
    start, so the first visitor does not wait for it."""
    hosts = allowed_hosts(settings)
    middleware = [Middleware(LoopbackOnly), Middleware(OwnerCookieMiddleware, skip_prefixes=PROGRAM_PATHS)]
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        middleware.insert(0, Middleware(ProgramCors, origins=origins))
    if "*" not in hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    middleware.insert(0, Middleware(UntrustForwardedFor))  # first: every layer after sees the real peer
    routes: list[Any] = [Route(LOAD_PATH, room_load, methods=["GET"])]
    if settings.api == "on":
        from edgechat.api import api_routes

        routes += api_routes(settings, page_sessions=page_sessions_open)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            shared_runtime(settings)
        except ConfigError as err:  # a bad model or device: one line and exit 2, as the terminal does
            print(f"error: {err}", file=sys.stderr, flush=True)
            os._exit(err.exit_code)  # uvicorn would turn a raise into a traceback and exit 3
        from streamlit import config

        if not settings.password and config.get_option("server.address") not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "the page is open to everyone who can reach this box, with no password: set "
                "EDGECHAT_PASSWORD=... (and --server-api-key for /v1) if the network is not trusted"
            )
        yield

    return {"routes": routes, "middleware": middleware, "lifespan": lifespan}
