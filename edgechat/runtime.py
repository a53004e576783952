"""Builds the ONE runtime of a process: handle, backend (engine behind its scheduler, or a remote
server), chat tokenizer.

The page, the terminal and the API all use `shared_runtime()`: a process-wide singleton behind a
real lock, built once and never dropped by anything a client sends (Streamlit's `clear_cache`
message clears `st.cache_resource`, which is why the runtime does not live there). It is rebuilt
only when its engine thread died, so a crash does not need a server restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from edgechat.backend import Backend, LocalBackend
from edgechat.config import Settings, default_model_path, options, parse_kv_budget
from edgechat.errors import ConfigError
from edgechat.scheduler import Scheduler
from edgechat.templates import ChatTokenizer

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    handle: Any  # sail.Handle on a Sophgo TPU; None on other backends
    backend: Backend  # the seed's `engine`: what every client submits to
    tokenizer: ChatTokenizer | None  # None for a remote server: it renders and tokenizes
    settings: Settings
    info: dict[str, Any] = field(default_factory=dict)  # backend, model, device, context length

    @property
    def alive(self) -> bool:
        return self.backend.alive

    def close(self) -> None:
        self.backend.close()


_lock = threading.Lock()
_shared: Runtime | None = None
builds = 0  # how many runtimes this process built: a test proves clients cannot make it grow


RUNTIME_GROUPS = ("model", "serving", "remote")  # the settings a runtime is built from


def runtime_key(settings: Settings) -> Settings:
    """`settings` with everything that does not shape the runtime (page, answer defaults,
    terminal) at its default, so two callers with the same engine flags share one runtime."""
    loose = {name: getattr(Settings(), name) for name, o in options().items() if o.group not in RUNTIME_GROUPS}
    return replace(settings, **loose)


def shared_runtime(settings: Settings) -> Runtime:
    """The process's runtime, built on first use from `settings`. In a served process every
    caller has the same flags; a caller with other engine flags (tests do this) replaces it. A
    dead one (its scheduler thread died) is closed and replaced."""
    global _shared, builds
    with _lock:
        if _shared is not None and not _shared.alive:
            log.error("the engine thread died; building a new runtime")
            dead, _shared = _shared, None
            dead.close()
        if _shared is not None and runtime_key(_shared.settings) != runtime_key(settings):
            old, _shared = _shared, None
            old.close()
        if _shared is None:
            _shared = load_runtime(settings)
            builds += 1
        return _shared


def load_runtime(settings: Settings) -> Runtime:
    """A new runtime; only tests and the singleton above call this directly."""
    backend = settings.resolved_backend
    if backend == "llamacpp":
        return _load_llamacpp(settings)
    if backend == "sail":
        return _load_sail(settings)
    if backend == "openai":
        return _load_remote(settings)
    raise ConfigError(f"unknown backend {backend!r}: use --backend auto, sail, llamacpp or openai")


def _scheduler(engine: Any, settings: Settings) -> Scheduler:
    return Scheduler(
        engine,
        max_running=settings.max_running,
        max_queue=settings.max_queue,
        kv_budget_tokens=_kv_budget_tokens(engine, settings),
        request_timeout_s=settings.request_timeout,
    )


def _kv_budget_tokens(engine: Any, settings: Settings) -> int | None:
    if settings.kv_budget is None:
        return None
    tokens = parse_kv_budget(settings.kv_budget, engine.kv_bytes_per_token)
    if tokens < engine.max_len:
        raise ConfigError(
            f"--kv-budget {settings.kv_budget} holds {tokens} tokens, less than one session's context of "
            f"{engine.max_len}; raise it or lower --context-length"
        )
    return tokens


def _local(handle: Any, engine: Any, chat: ChatTokenizer, settings: Settings) -> Runtime:
    info = {**engine.describe(), "template": chat.template.name}
    try:
        scheduler = _scheduler(engine, settings)
    except ConfigError:
        engine.close()
        raise
    return Runtime(handle, LocalBackend(scheduler, chat, info), chat, settings, info)


def _load_llamacpp(settings: Settings) -> Runtime:
    from edgechat.engines.llamacpp import LlamaCppEngine
    from edgechat.templates import template_for_gguf
    from edgechat.tokenizers.gguf import GgufTokenizer

    path = settings.model or default_model_path()
    engine = LlamaCppEngine(
        path,
        context_length=settings.context_length,
        max_sequences=settings.max_sessions,
        threads=settings.threads,
    )
    tokenizer = GgufTokenizer(engine.model)
    return _local(None, engine, ChatTokenizer(tokenizer, template_for_gguf(engine.metadata, tokenizer)), settings)


def _load_sail(settings: Settings) -> Runtime:
    from edgechat.engines.sail import DEFAULT_SLOTS, load_sail
    from edgechat.templates import Baichuan2ChatTemplate

    # KV slots for the answers being generated only (--max-running), not --max-sessions: the TPU
    # re-prefills the whole prompt every turn, so an idle session's cache is worth nothing there.
    slots = settings.max_running or DEFAULT_SLOTS
    handle, engine, tokenizer = load_sail(
        settings.bmodel, settings.token, settings.dev_ids, slots, settings.max_prompt_share
    )
    runtime = _local(handle, engine, ChatTokenizer(tokenizer, Baichuan2ChatTemplate(tokenizer)), settings)
    runtime.backend.max_prompt_len = engine.max_prompt_len  # the sample's answer room (--max-prompt-share)
    return runtime


def _load_remote(settings: Settings) -> Runtime:
    from edgechat.engines.remote import RemoteEngine

    assert settings.base_url is not None  # config checks --backend openai has one
    engine = RemoteEngine(
        settings.base_url,
        api_key=settings.api_key,
        model_name=settings.model_name,
        context_length=settings.context_length,
        request_timeout=settings.request_timeout,
    )
    return Runtime(None, engine, None, settings, engine.describe())
