"""Builds the ONE runtime of a process: sail handle, backend (engine behind its scheduler, or a remote
server), chat tokenizer.

The page, the terminal and the API all use `shared_runtime()`: a process-wide singleton behind a
real lock, built once and never dropped by anything a client sends (Streamlit's `clear_cache`
message clears `st.cache_resource`, which is why the runtime does not live there). It is rebuilt
only when its engine thread died, so a crash does not need a server restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from edgechat.backend import Backend, LocalBackend
from edgechat.client import with_handout
from edgechat.config import Settings, options
from edgechat.config_values import default_model_path, parse_host_cache, read_handout
from edgechat.errors import ConfigError
from edgechat.kvcache import MIB
from edgechat.prefixes import MIN_SHARED_TOKENS
from edgechat.room import layout
from edgechat.scheduler import RequestEvents, Scheduler
from edgechat.sequences import common_prefix
from edgechat.templates import ChatTokenizer
from edgechat.types import Message

log = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 16  # llama.cpp: answers generating at once unless --max-running says


@dataclass
class Runtime:
    sail_handle: Any  # sail.Handle on a Sophgo TPU; None on other backends
    backend: Backend  # the seed's `engine`: what every client submits to
    tokenizer: ChatTokenizer | None  # None for a remote server: it renders and tokenizes
    settings: Settings
    info: dict[str, Any] = field(default_factory=dict)  # backend, model, device, context length
    handout: str | None = None  # --handout's text: every conversation's system prompt starts with it
    loaded_at: float = field(default_factory=time.time)  # /healthz shows it: a reload is visible

    @property
    def alive(self) -> bool:
        return self.backend.alive

    def close(self) -> None:
        self.backend.close()


_lock = threading.Lock()
_shared: Runtime | None = None
builds = 0  # how many runtimes this process built: a test proves clients cannot make it grow


RUNTIME_GROUPS = ("model", "serving", "remote")  # the settings a runtime is built from
ROOM_PREFIX = ("system", "handout")  # ... and those of the prefix it pins (pin_room_prefix)


def runtime_key(settings: Settings) -> Settings:
    """`settings` with everything that does not shape the runtime (page, answer defaults,
    terminal) at its default, so two callers with the same engine flags share one runtime."""
    loose = {
        name: getattr(Settings(), name)
        for name, o in options().items()
        if o.group not in RUNTIME_GROUPS and name not in ROOM_PREFIX
    }
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


def current_runtime() -> Runtime | None:
    """The process's runtime as it is, dead or alive, without building one (/healthz, /metrics:
    a probe reports the state; it does not repair it)."""
    return _shared


def load_runtime(settings: Settings, share_prefixes: bool = True) -> Runtime:
    """A new runtime; only tests and the singleton above call this directly (benches compare
    `share_prefixes=False`: no prompt prefix shared across sessions, nothing pinned)."""
    backend = settings.resolved_backend
    loaders = {"llamacpp": _load_llamacpp, "sail": _load_sail, "openai": _load_remote}
    if backend not in loaders:
        raise ConfigError(f"unknown backend {backend!r}: use --backend auto, sail, llamacpp or openai")
    runtime = loaders[backend](settings, share_prefixes)  # type: ignore[operator]
    try:
        runtime.handout = read_handout(settings.handout) if settings.handout is not None else None
        pin_room_prefix(runtime)
    except ConfigError:
        runtime.close()
        raise
    return runtime


def pin_room_prefix(runtime: Runtime) -> RequestEvents | None:
    """Prefill the room's system prompt (--handout, then --system) once and pin it, so every new
    conversation copies it instead of reading it (edgechat.sharing): the tokens two conversations
    with that system prompt have in common, up to where their first questions begin."""
    system = with_handout([Message(role="system", content=runtime.settings.system or "")], runtime.handout)
    if not system[0]["content"] or runtime.tokenizer is None or not isinstance(runtime.backend, LocalBackend):
        return None
    a, b = (runtime.tokenizer.render([*system, Message(role="user", content=q)]) for q in ("a", "b"))
    prefix = a[: common_prefix(a, b)]
    room = runtime.backend.max_len // 2
    if len(prefix) > room:
        what = "--handout" if runtime.handout else "--system"
        raise ConfigError(
            f"{what} takes {len(prefix)} tokens of the prompt, more than half of the {runtime.backend.max_len}-token "
            "context every conversation has; shorten it or raise --context-length"
        )
    if len(prefix) < MIN_SHARED_TOKENS:
        return None
    return runtime.backend.scheduler.pin(prefix)


def _scheduler(engine: Any, settings: Settings, max_running: int | None, share_prefixes: bool = True) -> Scheduler:
    return Scheduler(
        engine,
        max_running=max_running,
        max_queue=settings.max_queue,
        time_slice=settings.time_slice,
        request_timeout_s=settings.request_timeout,
        host_cache_bytes=None if settings.host_cache is None else parse_host_cache(settings.host_cache),
        cache_ttl_s=settings.session_ttl,
        share_prefixes=share_prefixes,
    )


def _local(
    handle: Any,
    engine: Any,
    chat: ChatTokenizer,
    settings: Settings,
    max_running: int | None = None,
    share_prefixes: bool = True,
) -> Runtime:
    info = {**engine.describe(), "template": chat.template.name}
    try:
        scheduler = _scheduler(engine, settings, max_running, share_prefixes)
    except ConfigError:
        engine.close()
        raise
    return Runtime(handle, LocalBackend(scheduler, chat, info), chat, settings, info)


def _load_llamacpp(settings: Settings, share_prefixes: bool = True) -> Runtime:
    """Load the model, compute the KV layout from what a cached token costs (edgechat.room), then
    create the engine's context with it."""
    from edgechat.engines.llamacpp import LlamaCppEngine, LlamaCppModel
    from edgechat.templates import template_for_gguf
    from edgechat.tokenizers.gguf import GgufTokenizer

    model = LlamaCppModel(settings.model or default_model_path())
    running = settings.max_running or DEFAULT_MAX_RUNNING
    context = model.context(settings.context_length)
    try:
        kv = layout(settings, model.kv_bytes_per_token, context, running)
    except ConfigError:
        model.free()
        raise
    engine = LlamaCppEngine(
        model,
        context_length=kv.tokens_per_sequence,
        max_sequences=kv.sequences,
        threads=settings.threads,
        ubatch=settings.ubatch,
    )
    kv_mib = engine.kv_budget_tokens * engine.kv_bytes_per_token / MIB
    log.info(
        "KV cache: %d sequences of %d tokens (%.0f MiB); %d answers at once",
        engine.max_sequences, engine.max_len, kv_mib, running,
    )  # fmt: skip
    if engine.max_len < context:
        log.warning(
            "--kv-budget over --max-running %d answers leaves each %d tokens of context (--context-length %d): "
            "raise --kv-budget or lower --max-running for longer chats", running, engine.max_len,
            settings.context_length,
        )  # fmt: skip
    tokenizer = GgufTokenizer(engine.model)
    chat = ChatTokenizer(tokenizer, template_for_gguf(engine.metadata, tokenizer))
    return _local(None, engine, chat, settings, max_running=running, share_prefixes=share_prefixes)


def _load_sail(settings: Settings, share_prefixes: bool = True) -> Runtime:
    from edgechat.engines.sail import DEFAULT_SLOTS
    from edgechat.engines.sail_api import check_bmodel
    from edgechat.engines.sail_chips import load_engines
    from edgechat.token_config import load_token_config

    # KV slots for the answers being generated only (--max-running, on each TPU of --dev_ids), not
    # --max-sessions: each slot costs TPU memory, and only history K/V bmodels keep a cache idle.
    slots = settings.max_running or DEFAULT_SLOTS
    bmodel = check_bmodel(settings.bmodel)
    chat = load_token_config(settings.token)  # Baichuan2's tokenizer.model or a tokenizer.json folder
    vocab = chat.tokenizer.vocab_size
    handle, engine = load_engines(bmodel, vocab, settings.dev_ids, slots, settings.max_prompt_share)  # per TPU
    return _local(handle, engine, chat, settings)


def _load_remote(settings: Settings, share_prefixes: bool = True) -> Runtime:
    from edgechat.remote import RemoteBackend

    assert settings.base_url is not None  # config checks --backend openai has one
    backend = RemoteBackend(
        settings.base_url,
        api_key=settings.api_key,
        model_name=settings.model_name,
        context_length=settings.context_length,
        request_timeout=settings.request_timeout,
    )
    return Runtime(None, backend, None, settings, backend.describe())
