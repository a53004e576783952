"""Terminal chat, and the seed's client class `Baichuan2(handle, engine, tokenizer)`.

    python3 baichuan2.py --bmodel M --token DIR --dev_ids 0     # Baichuan2 on a Sophgo TPU
    python3 baichuan2.py                                        # embedded SmolLM2 on the CPU
    python3 baichuan2.py --prompt "What is 2+2?" --temperature 0   # answer once and exit

Type at `Question:`; `clear` starts over, `stats` shows the engine's figures, `exit` (or Ctrl-D)
quits, Ctrl-C stops an answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgechat.client import BLANK_INPUT_HINT, ChatClient
from edgechat.config import Settings, parse_settings
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, load_runtime
from edgechat.scheduler import Scheduler
from edgechat.templates import ChatTokenizer
from edgechat.types import FinishReason, Message, TurnStats

if TYPE_CHECKING:
    from edgechat.engines.remote import RemoteEngine  # imports openai (~1 s): only when used


class Baichuan2(ChatClient):
    """The seed's per-session client; `handle` is the sail.Handle on a TPU (None elsewhere)."""

    def __init__(
        self, handle: Any, engine: Scheduler | RemoteEngine, tokenizer: ChatTokenizer | None, **options: Any
    ) -> None:
        super().__init__(engine, tokenizer, **options)
        self.handle = handle


def client_for(runtime: Runtime, settings: Settings) -> Baichuan2:
    return Baichuan2(
        runtime.handle, runtime.engine, runtime.tokenizer, sampling=settings.sampling, system=settings.system
    )


def stats_line(stats: TurnStats) -> str:
    ftl = "-" if stats.first_token_s is None else f"{stats.first_token_s:.3f} s"
    tps = "-" if stats.decode_tps is None else f"{stats.decode_tps:.1f} token/s"
    return (
        f"FTL: {ftl}  TPS: {tps}  tokens: {stats.completion_tokens}  prompt: {stats.prompt_tokens}"
        f" (reused {stats.reused_tokens})  queued: {stats.queue_wait_s:.2f} s"
    )


def answer(client: Baichuan2, question: str, history: Sequence[Message]) -> str:
    """Stream one answer to stdout; Ctrl-C stops it and keeps what was said."""
    pieces: list[str] = []
    stream = client.chat_stream(question, history)
    try:
        for piece in stream:
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.close()
        print(" [stopped]", end="")
    print()
    stats = client.last_stats
    if stats.error:
        print(f"error: {stats.error}", file=sys.stderr)
    if stats.completion_tokens:
        print(stats_line(stats), file=sys.stderr)
    if stats.finish_reason is FinishReason.LENGTH:
        full = stats.prompt_tokens + stats.completion_tokens >= client.max_len
        limit = f"the context of {client.max_len} tokens is full" if full else "--max-new-tokens reached"
        print(f"(the answer stopped: {limit})", file=sys.stderr)
    return "".join(pieces)


def interactive(client: Baichuan2) -> None:
    history: list[Message] = []
    while True:
        try:
            question = input("\nQuestion: ")
        except EOFError:
            break
        if question.strip() == "exit":
            break
        if question.strip() == "stats":
            print(json.dumps(client.engine.stats(), indent=1))
            continue
        if question.strip() == "clear":
            history = []
            client.engine.forget_session(client.session)
            continue
        if not question.strip():
            print(BLANK_INPUT_HINT)
            continue
        print("\nAnswer: ", end="", flush=True)
        reply = answer(client, question, history)
        if client.last_stats.notice is None:
            history += [Message(role="user", content=question), Message(role="assistant", content=reply)]


def show_prompt(client: Baichuan2, question: str) -> None:
    if client.tokenizer is None:
        raise ValueError("--show-prompt needs a local model: a remote server renders the prompt itself")
    ids = client.prompt_ids(question)
    text = client.tokenizer.decode(ids, special=True)
    print(json.dumps({"template": client.tokenizer.template.name, "ids": ids, "text": text}, ensure_ascii=False))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv, prog="baichuan2.py")
        runtime = load_runtime(settings)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        client = client_for(runtime, settings)
        print(f"{runtime.info['model_name']} on {runtime.info['device']}", file=sys.stderr)
        if settings.show_prompt:
            show_prompt(client, settings.prompt if settings.prompt is not None else sys.stdin.read())
        elif settings.prompt is not None:
            if not settings.prompt.strip():
                print(BLANK_INPUT_HINT, file=sys.stderr)
                return 2
            answer(client, settings.prompt, [])
            if client.last_stats.error or client.last_stats.notice:
                return 1
        else:
            interactive(client)
    except ValueError as err:  # a history or template problem the user can act on
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
