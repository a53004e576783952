"""Prompt prefixes shared across conversations on real llama.cpp (issue 25): a newcomer whose prompt
starts with another conversation's system prompt prefills only its own tokens (the engine's own count
of computed rows) and answers exactly as alone; a conversation that copied a prefix and then goes its
own way never changes the owner's answers; a parked owner's record is a source too; the room's
--system and --handout are read once at start and pinned. Speed is bench/room.py's (config e)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgechat.config import parse_settings
from edgechat.errors import ConfigError
from edgechat.prefixes import MIN_SHARED_TOKENS
from edgechat.runtime import Runtime, load_runtime
from edgechat.scheduler import Scheduler
from edgechat.sequences import common_prefix
from edgechat.types import Message
from harness.room import handout
from tests.conftest import GREEDY
from tests.test_scheduler_llamacpp import news, tokens, wait_for

SYSTEM = handout(90)  # ~130 tokens: well over MIN_SHARED_TOKENS, quick to prefill on 2 cores
ANSWER = 8
GREEDY_ANSWER = replace(GREEDY, max_new_tokens=ANSWER)
NO_STOP: frozenset[int] = frozenset()  # every answer exactly ANSWER tokens: rows are countable


def ids(runtime: Runtime, *turns: str) -> list[int]:
    """The prompt of a chat whose user/assistant turns are `turns`, under SYSTEM."""
    roles = ["user", "assistant"]
    messages = [Message(role=roles[i % 2], content=t) for i, t in enumerate(turns)]  # type: ignore[typeddict-item]
    return runtime.tokenizer.render([Message(role="system", content=SYSTEM), *messages])


def ask(scheduler: Scheduler, prompt: list[int], cache_key: str) -> tuple[list[int], int, int]:
    """(answer, tokens copied from another conversation, rows the engine computed for it)."""
    before = scheduler.engine.tokens_computed
    handle = scheduler.submit(prompt, GREEDY_ANSWER, NO_STOP, cache_key=cache_key)
    answer = tokens(handle)
    return answer, handle.stats.shared_tokens, scheduler.engine.tokens_computed - before


def test_second_conversation_prefills_only_its_own_tokens_and_answers_as_alone(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    first, second = ids(runtime, "What is a lighthouse for?"), ids(runtime, "Tell me about bees.")
    alone = Scheduler(make_engine(max_sequences=2), share_prefixes=False)
    shared = Scheduler(make_engine(max_sequences=2))
    try:
        expected, _, _ = ask(alone, second, "b")
        ask(shared, first, "a")
        answer, copied, rows = ask(shared, second, "b")
        common = common_prefix(first, second)
        assert copied == common >= MIN_SHARED_TOKENS
        assert rows == len(second) - common + ANSWER - 1  # its own tokens, then the decodes
        assert answer == expected
        stats = shared.stats()
        assert stats.scheduler.room.prompt_tokens_shared == common and stats.scheduler.room.turns_shared == 1
        assert stats.scheduler.room.prompt_tokens_prefilled == len(first) + len(second) - common
    finally:
        alone.close()
        shared.close()


def test_a_copy_that_goes_its_own_way_never_changes_the_owner(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    """The owner's second turn answers the same whether or not someone copied its prefix and then
    changed that copy (a new first question: an edit), and still reuses its own cache."""
    q1, q2 = "Why is the sea salty?", "And why is it blue?"

    def owner_turns(scheduler: Scheduler, between: bool) -> tuple[list[int], int]:
        a1, _, _ = ask(scheduler, ids(runtime, q1), "owner")
        if between:
            _, copied, _ = ask(scheduler, ids(runtime, q1), "copier")  # copies the owner's whole prompt
            assert copied == len(ids(runtime, q1)) - 1
            ask(scheduler, ids(runtime, "Tell me about owls instead."), "copier")  # the copy is cut and rewritten
        handle = scheduler.submit(ids(runtime, q1, runtime.tokenizer.decode(a1), q2), GREEDY_ANSWER, NO_STOP, "owner")
        return tokens(handle), handle.stats.reused_tokens

    alone = Scheduler(make_engine(max_sequences=2), share_prefixes=False)
    shared = Scheduler(make_engine(max_sequences=2))
    try:
        expected, _ = owner_turns(alone, between=False)
        answer, reused = owner_turns(shared, between=True)
        assert answer == expected and reused > len(ids(runtime, q1))
    finally:
        alone.close()
        shared.close()


def test_a_parked_owners_record_is_restored_as_the_source_of_a_copy(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    owner, newcomer = ids(runtime, "What do owls eat?"), ids(runtime, "How do kites fly?")
    other = runtime.tokenizer.render([Message(role="user", content="Hi")])  # shares nothing
    alone = Scheduler(make_engine(max_sequences=1), share_prefixes=False)
    shared = Scheduler(make_engine(max_sequences=1))  # one sequence: an idle cache is parked for the next
    try:
        expected, _, _ = ask(alone, newcomer, "n")
        ask(shared, owner, "owner")
        ask(shared, other, "other")  # parks the owner's cache in host RAM
        assert shared.stats().scheduler.room.sessions_parked == 1
        answer, copied, rows = ask(shared, newcomer, "n")
        assert copied == common_prefix(owner, newcomer) >= MIN_SHARED_TOKENS
        assert rows == len(newcomer) - copied + ANSWER - 1 and answer == expected
        handle = shared.submit(owner, GREEDY_ANSWER, NO_STOP, cache_key="owner")  # the owner's record is still whole
        list(news(handle))
        assert handle.stats.reused_tokens == len(owner) - 1 and shared.stats().scheduler.turns_restored == 1
    finally:
        alone.close()
        shared.close()


def test_a_room_answers_the_same_with_sharing_on_and_off(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    """Three people with one system prompt, asking at once, two turns each: bit-identical answers."""
    questions = ["What is rain?", "Name a chess piece.", "Why do cats purr?"]

    def room(scheduler: Scheduler) -> list[list[int]]:
        handles = [
            scheduler.submit(ids(runtime, q), GREEDY_ANSWER, NO_STOP, cache_key=f"p{i}")
            for i, q in enumerate(questions)
        ]
        first = [tokens(h) for h in handles]
        seconds = [
            scheduler.submit(ids(runtime, q, runtime.tokenizer.decode(a), "Say more."), GREEDY_ANSWER, NO_STOP, f"p{i}")
            for i, (q, a) in enumerate(zip(questions, first, strict=True))
        ]
        return first + [tokens(h) for h in seconds]

    off = Scheduler(make_engine(max_sequences=3, context_length=512), share_prefixes=False)
    on = Scheduler(make_engine(max_sequences=3, context_length=512))
    try:
        assert room(on) == room(off)
        assert on.stats().scheduler.room.turns_shared == 2 and off.stats().scheduler.room.turns_shared == 0
        assert on.stats().scheduler.room.prompt_tokens_prefilled < off.stats().scheduler.room.prompt_tokens_prefilled
    finally:
        off.close()
        on.close()


def test_the_rooms_system_prompt_is_read_once_and_pinned(tmp_path) -> None:  # noqa: ANN001
    sheet = tmp_path / "handout.md"
    sheet.write_text(handout(60), encoding="utf-8")
    flags = ["--context-length", "512", "--max-running", "1", "--handout", str(sheet), "--system", "Be brief."]
    room = load_runtime(parse_settings(flags, env={}))
    try:
        scheduler = room.backend.scheduler
        assert wait_for(
            lambda: scheduler.stats().scheduler.room.pinned_prefixes == 1, 60
        )  # read once, kept in a sequence
        assert (
            scheduler.stats().scheduler.completed == 0
            and scheduler.stats().scheduler.room.pinned_tokens >= MIN_SHARED_TOKENS
        )
        system = f"{handout(60)}\n\nBe brief."
        for i, question in enumerate(["Hi", "What is honey?", "Hello again"]):  # each one evicts the last
            prompt = room.tokenizer.render(
                [Message(role="system", content=system), Message(role="user", content=question)]
            )
            handle = scheduler.submit(prompt, GREEDY_ANSWER, NO_STOP, cache_key=f"s{i}")
            list(news(handle))
            assert handle.stats.shared_tokens >= MIN_SHARED_TOKENS, i
        stats = scheduler.stats()
        assert stats.scheduler.room.pinned_prefixes == 1 and stats.scheduler.room.pinned_tokens >= MIN_SHARED_TOKENS
    finally:
        room.close()


def test_ubatch_is_the_operators_choice_and_63_by_default(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    """--ubatch: 63 rows unless told (one flash-attention kernel for every row); a larger one is
    what llama.cpp's context runs with, capped by a step's rows, and it answers."""
    import llama_cpp as lc

    assert parse_settings([], env={}).ubatch == 63
    default, wide = make_engine(), make_engine(ubatch=256)
    assert lc.llama_n_ubatch(default.ctx) == 63 and lc.llama_n_ubatch(wide.ctx) == 256
    scheduler = Scheduler(wide)
    try:
        answer, _, rows = ask(scheduler, ids(runtime, "What is honey?"), "u")
        assert len(answer) == ANSWER and rows == len(ids(runtime, "What is honey?")) + ANSWER - 1
    finally:
        scheduler.close()


def test_a_handout_the_context_cannot_hold_stops_the_start_with_one_line(tmp_path) -> None:  # noqa: ANN001
    sheet = tmp_path / "handout.md"
    sheet.write_text(handout(600), encoding="utf-8")  # ~720 tokens, more than half of 512
    with pytest.raises(ConfigError) as err:
        load_runtime(parse_settings(["--context-length", "512", "--handout", str(sheet)], env={}))
    assert "--handout" in str(err.value) and "--context-length" in str(err.value) and err.value.exit_code == 2
