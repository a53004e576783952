"""A person's client and conversation over the process's runtime, built one way for the page, the
terminal, the benches and the tests: the shared backend and tokenizer, the room's handout, and the
answer defaults of the settings (sampling, system prompt, the question's length cap).
"""

from __future__ import annotations

from edgechat.client import ChatClient
from edgechat.config import Settings
from edgechat.conversation import Conversation
from edgechat.runtime import Runtime
from edgechat.types import SamplingParams


def client_for(
    runtime: Runtime,
    settings: Settings | None = None,
    *,
    sampling: SamplingParams | None = None,
    system: str | None = None,
    cache_key: str | None = None,
    source: str = "page",
) -> ChatClient:
    """A client with the answer defaults of `settings` (the runtime's own when None), unless
    `sampling` or `system` say otherwise. `cache_key` keys its KV cache (a new one when None);
    `source` says who asks, for /metrics."""
    settings = settings or runtime.settings
    return ChatClient(
        runtime.backend,
        runtime.tokenizer,
        sampling=sampling or settings.sampling,
        system=settings.system if system is None else system,
        cache_key=cache_key,
        source=source,
        handout=runtime.handout,
    )


def conversation_for(
    runtime: Runtime, settings: Settings, cache_key: str | None = None, source: str = "page"
) -> Conversation:
    """A conversation over a fresh client, with the settings' sampling, system prompt and cap."""
    return Conversation(
        client_for(runtime, settings, cache_key=cache_key, source=source),
        sampling=settings.sampling,
        system=settings.system or "",
        max_input_chars=settings.max_input_chars,
    )
