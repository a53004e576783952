"""A conversation on the real model: actions, the answer thread, refusals, limits, caps."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from edgechat.clients import conversation_for
from edgechat.config import parse_settings
from edgechat.conversation import Conversation
from edgechat.records import MAX_CHARS
from edgechat.runtime import Runtime
from tests.conftest import GREEDY

WAIT_S = 120  # bound on one answer on a loaded 2-core box


def conversation(runtime: Runtime, **flags: str) -> Conversation:
    argv = [item for key, value in flags.items() for item in (f"--{key.replace('_', '-')}", value)]
    conv = conversation_for(runtime, parse_settings(argv, env={}))
    conv.sampling = GREEDY
    return conv


def answered(conv: Conversation) -> dict:
    assert conv.answer is not None and conv.answer.join(WAIT_S), "the answer did not end"
    return conv.records[-1]


def test_ask_answers_into_the_last_record_and_regenerate_replaces_it(runtime: Runtime) -> None:
    conv = conversation(runtime)
    assert conv.ask("What is 2+2?") is None
    first = answered(conv)
    assert [r["role"] for r in conv.records] == ["user", "assistant"] and "4" in first["content"]
    assert first["stats"]["completion_tokens"] > 0 and first["stats"]["finish_reason"] == "stop"
    assert conv.regenerate() is None
    assert answered(conv)["content"] == first["content"] and len(conv.records) == 2  # greedy: the same


def test_edit_replaces_the_last_question_and_its_answer(runtime: Runtime) -> None:
    conv = conversation(runtime)
    conv.ask("What is 2+2?")
    answered(conv)
    assert conv.edit("What is the opposite of hot?") is None
    assert "cold" in answered(conv)["content"].lower()
    assert [r["content"] for r in conv.records if r["role"] == "user"] == ["What is the opposite of hot?"]


def test_stop_keeps_the_partial_answer_and_continue_goes_on_from_it(runtime: Runtime) -> None:
    conv = conversation(runtime)
    conv.sampling = replace(GREEDY, max_new_tokens=300)
    conv.ask("Write a long story about a dragon.")
    assert conv.answer is not None and conv.answer.wait(20, WAIT_S)
    conv.stop()
    stopped = answered(conv)
    assert stopped.get("stopped") and stopped["content"] and conv.can_continue
    partial = stopped["content"]
    conv.sampling = replace(GREEDY, max_new_tokens=12)
    assert conv.continue_answer() is None
    record = answered(conv)
    assert record is stopped and record["content"].startswith(partial) and len(record["content"]) > len(partial)
    assert not record.get("stopped") and record["stats"]["reused_tokens"] > 0  # its KV cache was kept


def test_a_page_that_stops_following_interrupts_the_answer(runtime: Runtime) -> None:
    conv = conversation(runtime)
    conv.watch_s = 0.5  # the page renders (touches) an answer every frame; here nobody does
    conv.sampling = replace(GREEDY, max_new_tokens=400)
    conv.ask("Write a long story about a dragon.")
    record = answered(conv)
    assert record.get("interrupted") and record["stats"]["completion_tokens"] < 400


def test_a_slow_page_whose_session_is_open_keeps_its_answer(runtime: Runtime) -> None:
    """Nobody follows the answer for longer than watch_s (a page on a busy box whose run starts late),
    but the page's session says it is still there: the answer runs to its end. Once the session
    says it is gone, the next answer is interrupted."""
    open_page = [True]
    conv = conversation(runtime)
    conv.watch_s, conv.alive = 0.3, lambda: open_page[0]
    conv.sampling = replace(GREEDY, max_new_tokens=200)
    conv.ask("Write a long story about a dragon.")
    record = answered(conv)
    assert not record.get("interrupted") and record["stats"]["completion_tokens"] == 200
    open_page[0] = False
    conv.ask("Write a long story about a knight.")
    record = answered(conv)
    assert record.get("interrupted") and record["stats"]["completion_tokens"] < 200


def test_refused_questions_leave_the_conversation_as_it_was(runtime: Runtime) -> None:
    conv = conversation(runtime, max_input_chars="50")
    assert conv.ask("   ").key == "blank"
    assert conv.ask("x" * 51).key == "too_long"
    conv.max_input_chars = 100_000
    assert conv.ask("tell me " * 5000) is None  # accepted here, refused by the context
    assert conv.answer is not None and conv.answer.join(WAIT_S)
    assert conv.records == [] and conv.refusals and "input length is too long" in conv.refusals[0]


def test_a_system_prompt_over_the_cap_is_refused_and_the_last_one_stays(runtime: Runtime) -> None:
    conv = conversation(runtime, max_input_chars="100")
    assert conv.set_system("  Be brief.  ") is None and conv.system == "Be brief."
    refusal = conv.set_system("x" * 25_000_000)  # what a crafted websocket message could carry
    assert refusal is not None and refusal.key == "system_too_long" and conv.system == "Be brief."


def test_one_address_gets_only_its_share_of_answers_at_once(runtime: Runtime) -> None:
    from edgechat.access import ClientLimits

    limits = ClientLimits(rate_limit=0, max_in_flight=1)
    a, b, other = (conversation(runtime) for _ in range(3))
    for conv, address in ((a, "10.0.0.1"), (b, "10.0.0.1"), (other, "10.0.0.2")):
        conv.admission = lambda address=address: limits.acquire(address)
        conv.sampling = replace(GREEDY, max_new_tokens=200)
    assert a.ask("Write a long story.") is None
    assert b.ask("What is 2+2?").key == "too_many_at_once" and b.records == []
    assert other.ask("What is 2+2?") is None  # another person is served meanwhile
    a.stop()
    answered(a)
    answered(other)
    assert limits.in_flight("10.0.0.1") == 0 and b.ask("What is 2+2?") is None
    answered(b)


def test_changes_reach_on_change_while_an_answer_streams(runtime: Runtime) -> None:
    conv = conversation(runtime)
    conv.sampling = replace(GREEDY, max_new_tokens=64)
    seen: list[int] = []
    lock = threading.Lock()

    def on_change(c: Conversation) -> None:
        with lock:
            seen.append(len(c.records))

    conv.on_change = on_change
    conv.ask("What is 2+2?")
    answered(conv)
    assert seen[0] == 2 and seen[-1] == 2  # the question with its empty answer, then the end


def test_a_conversation_never_grows_past_its_caps(runtime: Runtime) -> None:
    conv = conversation(runtime)
    conv.records = [{"role": r, "content": "y" * (MAX_CHARS // 100)} for _ in range(60) for r in ("user", "assistant")]
    conv.sampling = replace(GREEDY, max_new_tokens=2)
    conv.ask("Hi")
    answered(conv)
    assert sum(len(r["content"]) for r in conv.records) <= MAX_CHARS and conv.dropped > 0
    assert conv.records[0]["role"] == "user"


@pytest.mark.parametrize("action", ["regenerate", "continue_answer"])
def test_actions_without_anything_to_act_on_are_refused(runtime: Runtime, action: str) -> None:
    assert getattr(conversation(runtime), action)() is not None
