"""Terminal chat, and the seed's client class `Baichuan2(handle, engine, tokenizer)`.

    python3 baichuan2.py --bmodel M --token DIR --dev_ids 0     # Baichuan2 on a Sophgo TPU
    python3 baichuan2.py                                        # embedded SmolLM2 on the CPU
    python3 baichuan2.py --prompt "What is 2+2?" --temperature 0   # answer once and exit

Type at `Question:`; `clear` starts over, `stats` shows the engine's figures, `exit` (or Ctrl-D)
quits, Ctrl-C stops an answer and keeps what was said.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from edgechat.backend import Backend
from edgechat.chats import SavedChat, shared_store
from edgechat.client import BLANK_INPUT_HINT, ChatClient
from edgechat.clients import conversation_for
from edgechat.config import Settings, parse_settings
from edgechat.conversation import Conversation, Refusal
from edgechat.errors import ConfigError
from edgechat.owner import local_owner
from edgechat.runtime import Runtime, shared_runtime
from edgechat.store import StoreUnavailable, default_data_dir
from edgechat.templates import ChatTokenizer
from edgechat.types import FinishReason, TurnStats
from edgechat.ui_text import t

FOLLOW_TICK_S = 0.5  # how often the terminal wakes while an answer is quiet (queued, prefilling)


class Baichuan2(ChatClient):
    """The seed's per-session client; `handle` is the sail.Handle on a TPU (None elsewhere),
    `engine` the shared backend, `tokenizer` the shared chat tokenizer (None for a remote server)."""

    def __init__(self, handle: Any, engine: Backend, tokenizer: ChatTokenizer | None, **options: Any) -> None:
        super().__init__(engine, tokenizer, **options)
        self.handle = handle


def saved_conversation(runtime: Runtime, settings: Settings) -> tuple[Conversation, SavedChat | None]:
    """The terminal's conversation, saved in the same store as the page's chats under the
    terminal's own owner (a private token file in the data folder); `--resume ID` reopens one."""
    conversation = conversation_for(runtime, settings, source="terminal")
    if settings.no_history:
        if settings.resume:
            raise ConfigError("--resume needs saved chats: drop --no-history")
        return conversation, None
    data_dir = settings.data_dir or default_data_dir()
    try:
        store = shared_store(data_dir, settings.keep_days)
        owner = local_owner(data_dir)
    except (StoreUnavailable, OSError) as err:
        if settings.resume:
            raise ConfigError(f"--resume {settings.resume}: history is off ({err})") from None
        print(f"history is off: {err}", file=sys.stderr)
        return conversation, None
    if not settings.resume:
        saved = SavedChat(store, owner)
    else:
        chat = store.get(owner, settings.resume)
        if chat is None:
            raise ConfigError(f"--resume {settings.resume}: no such terminal chat in {data_dir} (see --data-dir)")
        conversation.records = chat.messages
        saved = SavedChat(store, owner, chat.id, chat.messages)
    saved.attach(conversation)
    return conversation, saved


def stats_line(stats: TurnStats) -> str:
    ftl = "-" if stats.first_token_s is None else f"{stats.first_token_s:.3f} s"
    tps = "-" if stats.decode_tps is None else f"{stats.decode_tps:.1f} token/s"
    return (
        f"FTL: {ftl}  TPS: {tps}  tokens: {stats.completion_tokens}  prompt: {stats.prompt_tokens}"
        f" (reused {stats.reused_tokens}, shared {stats.shared_tokens})  queued: {stats.queue_wait_s:.2f} s"
    )


def follow(conversation: Conversation) -> bool:
    """Print the answer in progress as it arrives; Ctrl-C stops it and keeps what was said.
    True when it was answered without an error."""
    answer = conversation.answer
    assert answer is not None
    shown = 0
    while True:
        try:
            answer.wait(shown, FOLLOW_TICK_S)
        except KeyboardInterrupt:
            conversation.stop()
            answer.join(30)
        ended = not answer.running  # asked before reading: the last text is in by the time it ends
        text = answer.record["content"]
        print(text[shown:], end="", flush=True)
        shown = len(text)
        if ended:
            break
    if answer.record.get("stopped"):
        print(" [stopped]", end="")
    print()
    for message in conversation.refusals:
        print(message, file=sys.stderr)
    if answer.record.get("error"):
        print(f"error: {answer.record['error']}", file=sys.stderr)
    stats = conversation.client.last_stats
    if stats.completion_tokens:
        print(stats_line(stats), file=sys.stderr)
    if stats.finish_reason is FinishReason.LENGTH:
        full = stats.prompt_tokens + stats.completion_tokens >= conversation.client.max_len
        limit = f"the context of {conversation.client.max_len} tokens is full" if full else "--max-new-tokens reached"
        print(f"(the answer stopped: {limit})", file=sys.stderr)
    ok = not conversation.refusals and not answer.record.get("error")
    conversation.refusals.clear()
    return ok


def refused(refusal: Refusal) -> None:
    print(t("en", refusal.key, **refusal.fields))


def new_chat(conversation: Conversation, saved: SavedChat | None) -> SavedChat | None:
    """`clear`: the saved chat stays as it was; what follows is saved as a new one."""
    conversation.on_change = None
    conversation.clear()
    if saved is None:
        return None
    fresh = SavedChat(saved.store, saved.owner)
    fresh.attach(conversation)
    return fresh


def interactive(conversation: Conversation, saved: SavedChat | None) -> SavedChat | None:
    while True:
        try:
            question = input("\nQuestion: ")
        except EOFError:
            break
        command = question.strip()
        if command == "exit":
            break
        if command == "stats":
            print(json.dumps(asdict(conversation.client.backend.stats()), indent=1))
            continue
        if command == "clear":
            saved = new_chat(conversation, saved)
            continue
        refusal = conversation.ask(question)
        if refusal is not None:
            refused(refusal)
            continue
        print("\nAnswer: ", end="", flush=True)
        follow(conversation)
    return saved


def show_prompt(conversation: Conversation, question: str) -> None:
    """The ids and text the model would read for `question` after this conversation's history."""
    client = conversation.client
    ids = client.prompt_ids(question, conversation.messages_for_model())
    assert client.tokenizer is not None  # prompt_ids refused a remote server already
    text = client.tokenizer.decode(ids, special=True)
    print(json.dumps({"template": client.tokenizer.template.name, "ids": ids, "text": text}, ensure_ascii=False))


def answer_once(conversation: Conversation, question: str) -> int:
    if not question.strip():
        print(BLANK_INPUT_HINT, file=sys.stderr)
        return 2
    refusal = conversation.ask(question)
    if refusal is not None:
        print(t("en", refusal.key, **refusal.fields), file=sys.stderr)
        return 1
    return 0 if follow(conversation) else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv, prog="baichuan2.py")
        runtime = shared_runtime(settings)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        conversation, saved = saved_conversation(runtime, settings)
    except ConfigError as err:
        runtime.close()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        print(f"{runtime.info['model_name']} on {runtime.info['device']}", file=sys.stderr)
        if settings.show_prompt:
            show_prompt(conversation, settings.prompt if settings.prompt is not None else sys.stdin.read())
        elif settings.prompt is not None:
            return answer_once(conversation, settings.prompt)
        else:
            if conversation.records:
                print(f"(resumed: {len(conversation.records)} messages)", file=sys.stderr)
            saved = interactive(conversation, saved)
            if saved is not None and saved.chat_id is not None:
                print(f"chat saved: go on with --resume {saved.chat_id}", file=sys.stderr)
    except ValueError as err:  # a history or template problem the user can act on
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
