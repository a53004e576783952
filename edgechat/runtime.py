"""Builds the ONE shared runtime of a process: handle, engine (behind its scheduler), tokenizer.

`web_demo.py` caches it with `st.cache_resource`; `baichuan2.py` builds it once. Every session's
client takes these three and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgechat.config import Settings, default_model_path, parse_kv_budget
from edgechat.errors import ConfigError
from edgechat.scheduler import Scheduler
from edgechat.templates import ChatTokenizer

if TYPE_CHECKING:
    from edgechat.engines.remote import RemoteEngine


@dataclass
class Runtime:
    handle: Any  # sail.Handle on a Sophgo TPU; None on other backends
    engine: Scheduler | RemoteEngine  # RemoteEngine: chat-level, the server batches (no scheduler)
    tokenizer: ChatTokenizer | None  # None for a remote server: it renders and tokenizes
    info: dict[str, Any] = field(default_factory=dict)  # backend, model, device, context length

    def close(self) -> None:
        self.engine.close()
        if isinstance(self.engine, Scheduler):
            self.engine.engine.close()


def load_runtime(settings: Settings) -> Runtime:
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
    template = template_for_gguf(engine.metadata, tokenizer)
    info = {**engine.describe(), "template": template.name}
    return Runtime(None, _scheduler(engine, settings), ChatTokenizer(tokenizer, template), info)


def _load_sail(settings: Settings) -> Runtime:
    from edgechat.engines.sail import DEFAULT_SLOTS, load_sail
    from edgechat.templates import Baichuan2ChatTemplate

    # KV slots for the answers being generated only (--max-running), not --max-sessions: the TPU
    # re-prefills the whole prompt every turn, so an idle session's cache is worth nothing there.
    slots = settings.max_running or DEFAULT_SLOTS
    handle, engine, tokenizer = load_sail(
        settings.bmodel, settings.token, settings.dev_ids, slots, settings.max_prompt_share
    )
    template = Baichuan2ChatTemplate(tokenizer)
    info = {**engine.describe(), "template": template.name}
    return Runtime(handle, _scheduler(engine, settings), ChatTokenizer(tokenizer, template), info)


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
    return Runtime(None, engine, None, engine.describe())
