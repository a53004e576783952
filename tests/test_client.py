"""The per-session client: history handling, context budget, typed events, stats."""

from dataclasses import replace

from baichuan2 import Baichuan2
from edgechat.client import BLANK_INPUT_HINT, ChatClient
from edgechat.clients import client_for
from edgechat.runtime import Runtime
from edgechat.types import Done, Failed, FinishReason, Message
from tests.conftest import GREEDY


def client(runtime: Runtime, system: str | None = None) -> ChatClient:
    return client_for(runtime, sampling=GREEDY, system=system)


def test_the_seeds_client_class_answers_with_its_own_signature(runtime: Runtime) -> None:
    """`Baichuan2(handle, engine, tokenizer).chat_stream(input, history)`: scripts written
    against the seed still run (baichuan2.py keeps the class)."""
    seed = Baichuan2(runtime.sail_handle, runtime.backend, runtime.tokenizer, sampling=GREEDY)
    assert (
        seed.handle is runtime.sail_handle and seed.backend is runtime.backend and seed.tokenizer is runtime.tokenizer
    )
    history = [Message(role="user", content="Hello"), Message(role="assistant", content="Hi!")]
    assert "4" in "".join(seed.chat_stream("What is 2+2?", history))
    assert seed.last_stats.completion_tokens > 0 and seed.last_stats.error is None


def test_seed_history_ending_with_the_question_is_not_repeated(runtime: Runtime) -> None:
    c = client(runtime)
    history = [Message(role="user", content="Hello"), Message(role="assistant", content="Hi!")]
    alone = c.prompt_ids("What is 2+2?", history)
    seed_style = c.prompt_ids("What is 2+2?", [*history, Message(role="user", content="What is 2+2?")])
    assert alone == seed_style


def test_answer_streams_text_and_reports_stats(runtime: Runtime) -> None:
    c = client(runtime)
    text = "".join(c.chat_stream("What is 2+2?", []))
    assert "4" in text
    s = c.last_stats
    assert s.prompt_tokens > 10 and s.completion_tokens > 0 and s.first_token_s is not None
    assert s.finish_reason in ("stop", "length") and s.error is None


def test_oldest_turns_are_trimmed_to_fit(runtime: Runtime) -> None:
    c = client(runtime)
    long_turn = "word " * 150
    history: list[Message] = []
    for i in range(8):
        history += [
            Message(role="user", content=f"Q{i} {long_turn}"),
            Message(role="assistant", content=f"A{i} {long_turn}"),
        ]
    ids = c.prompt_ids("Last question?", history)
    assert len(ids) <= c.max_len
    text = "".join(c.chat_stream("Last question?", history))
    assert text and c.last_stats.trimmed_messages >= 2 and c.last_stats.error is None
    prompt = runtime.tokenizer.decode(ids)
    assert "Q7" in prompt and "Q0 " not in prompt  # newest kept, oldest dropped


def test_input_that_cannot_fit_is_refused_with_a_reason_not_as_answer_text(runtime: Runtime) -> None:
    c = client(runtime)
    assert "".join(c.chat_stream("tell me " * 2000, [])) == ""
    assert (c.last_stats.error or "").startswith("input length is too long")
    events = list(c.stream(c.messages_for("tell me " * 2000, [])))
    assert [type(e) for e in events] == [Failed, Done] and events[0].refused
    assert "context holds" in events[0].message and events[1].stats.finish_reason is FinishReason.ERROR


def test_blank_input_is_ignored_with_a_hint(runtime: Runtime) -> None:
    c = client(runtime)
    assert list(c.chat_stream("   \n\t", [])) == []
    assert c.last_stats.error == BLANK_INPUT_HINT


def test_system_prompt_reaches_the_model(runtime: Runtime) -> None:
    c = client(runtime, system="You are a pirate.")
    prompt = runtime.tokenizer.decode(c.prompt_ids("Hi"), special=True)
    assert prompt.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>")
    assert "SmolLM" not in prompt


def test_the_rooms_handout_starts_every_system_prompt(runtime: Runtime) -> None:
    sheet = "Handout: the workshop is about bread."
    for system, expected in ((None, sheet), ("You are a pirate.", f"{sheet}\n\nYou are a pirate.")):
        c = client_for(replace(runtime, handout=sheet), sampling=GREEDY, system=system)
        prompt = runtime.tokenizer.decode(c.prompt_ids("Hi"), special=True)
        assert prompt.startswith(f"<|im_start|>system\n{expected}<|im_end|>")
        answer = c.stream(c.messages_for("Hi", []), replace(GREEDY, max_new_tokens=1))
        done = [e for e in answer if isinstance(e, Done)][0]
        assert done.stats.prompt_tokens == len(c.prompt_ids("Hi"))


def test_max_new_tokens_bounds_the_answer(runtime: Runtime) -> None:
    c = client(runtime)
    text = "".join(c.chat_stream("Write a long story about a dragon.", [], sampling=replace(GREEDY, max_new_tokens=5)))
    assert text and c.last_stats.completion_tokens == 5 and c.last_stats.finish_reason is FinishReason.LENGTH


def test_a_conversation_of_a_system_message_alone_is_answered(runtime: Runtime) -> None:
    c = client(runtime)
    events = list(c.stream([Message(role="system", content="You are a pirate. Greet the user.")]))
    assert not any(isinstance(e, Failed) for e in events) and events[-1].stats.completion_tokens > 0


def test_without_trimming_an_over_long_conversation_is_refused_whole(runtime: Runtime) -> None:
    """The API's default (OpenAI's 400 context_length_exceeded): nothing dropped silently."""
    c = client(runtime)
    history = [Message(role=r, content=f"{r} {i} " + "word " * 150) for i in range(8) for r in ("user", "assistant")]
    messages = [*history, Message(role="user", content="Last question?")]
    events = list(c.stream(messages, trim=False))
    assert isinstance(events[0], Failed) and events[0].refused and "the conversation is" in events[0].message
    assert c.fit(messages, GREEDY.max_new_tokens)[1] >= 2  # the page's way: trimmed to fit
