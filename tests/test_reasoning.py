"""A reasoning model's `<think>` part (DeepSeek-R1-Distill, Qwen3): told apart from the answer
whole and streamed (tags split across tokens), left out of the next prompt where the model's
template says so, and sent as `reasoning_content` by the API, as vLLM does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgechat.reasoning import REASONING, ReasoningStream, split_reasoning
from edgechat.token_config import load_token_config
from edgechat.tokenizers import decode
from edgechat.types import Message
from tests.sail.qwen_harness import CHATML, write_token_config

# Shaped like Qwen3's / DeepSeek-R1's templates (written here): earlier answers lose their think
# part; R1's generation prompt opens one.
DROPS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'].split('</think>')[-1].lstrip('\\n') }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OPENS = DROPS.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")


def test_whole_answers_split() -> None:
    assert split_reasoning("<think>\nweigh it\n</think>\n\nYes.") == ("weigh it", "Yes.")
    assert split_reasoning("no think part") == ("", "no think part")
    assert split_reasoning("<think>still thinking") == ("still thinking", "")
    assert split_reasoning("weigh it\n</think>\n\nYes.", opened=True) == ("weigh it", "Yes.")


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7])
def test_a_stream_split_anywhere_gives_the_same_parts(cut: int) -> None:
    text = "<think>\nLet me weigh it.\n</think>\n\nYes: <b>fine</b>."
    stream = ReasoningStream()
    pieces = [p for i in range(0, len(text), cut) for p in stream.feed(text[i : i + cut])] + stream.flush()
    reasoning = "".join(p for k, p in pieces if k == REASONING)
    content = "".join(p for k, p in pieces if k == "content")
    assert (reasoning.strip(), content) == ("Let me weigh it.", "Yes: <b>fine</b>.")
    plain = ReasoningStream(active=False)
    assert plain.feed("<think>x") == [("content", "<think>x")]


def folder(tmp_path: Path, template: str) -> Path:
    path = write_token_config(tmp_path / "config", template=template)
    return path


def test_the_template_decides_what_the_next_prompt_keeps(tmp_path: Path) -> None:
    chat = load_token_config(folder(tmp_path, DROPS))
    assert chat.reasoning and not chat.opens_reasoning
    turns = [
        Message(role="user", content="q1"),
        Message(role="assistant", content="<think>\nsecret steps\n</think>\n\nA1"),
        Message(role="user", content="q2"),
    ]
    text = decode(chat.tokenizer, chat.render(turns), special=True)
    assert "secret steps" not in text and "A1" in text
    plain = load_token_config(folder(tmp_path / "plain", CHATML))  # no think part in this template
    assert not plain.reasoning
    assert "secret steps" in decode(plain.tokenizer, plain.render(turns), special=True)


def test_a_prompt_that_opens_the_think_part(tmp_path: Path) -> None:
    chat = load_token_config(folder(tmp_path, OPENS))
    assert chat.opens_reasoning and chat.reasoning
    text = decode(chat.tokenizer, chat.render([Message(role="user", content="q")]), special=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n")


def test_the_api_sends_reasoning_content(tmp_path: Path) -> None:
    """On the emulated TPU with an R1-shaped template: the prompt opens the think part, so the
    tiny model's whole answer (it never closes it) is reasoning, streamed and whole."""
    import sys

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from edgechat.api import api_routes
    from edgechat.config import parse_settings
    from edgechat.metrics import ServingMetrics
    from tests.sail.harness import open_runtime, sail
    from tests.sail.qwen_harness import Variant, write_qwen_bmodel

    sail.install_as(tmp_path / "site", "3.9.4", "sophon")
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        cfg = folder(tmp_path, OPENS)
        chat = load_token_config(cfg)
        bmodel = write_qwen_bmodel(tmp_path / "r1.bmodel", Variant("int8", True), chat.tokenizer.vocab_size)
        rt = open_runtime(bmodel, cfg)
        try:
            routes = api_routes(
                parse_settings([], env={}), runtime=lambda: rt, current=lambda: rt, metrics=ServingMetrics()
            )
            body = {"messages": [{"role": "user", "content": "Why?"}], "temperature": 0, "max_tokens": 12}
            with TestClient(Starlette(routes=routes)) as http:
                whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
                with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                    lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        finally:
            rt.close()
    finally:
        sys.path.remove(str(tmp_path / "site"))
    assert whole["content"] == "" and whole["reasoning_content"]
    streamed = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in lines if c["choices"])
    assert streamed.strip() == whole["reasoning_content"]


def test_the_page_folds_the_think_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page on the emulated TPU with an R1-shaped template: the answer (all think part, as the
    tiny model never closes it) sits folded under an empty answer, and is kept whole in the chat."""
    import sys

    from streamlit.testing.v1 import AppTest

    from tests.sail.harness import REPO, Mode, sail
    from tests.sail.qwen_harness import Variant, write_qwen_bmodel

    sail.install_as(tmp_path / "site", "3.9.4", "sophon")
    cfg = folder(tmp_path, OPENS)
    bmodel = write_qwen_bmodel(
        tmp_path / "r1.bmodel", Variant("int8", True), load_token_config(cfg).tokenizer.vocab_size
    )
    env = Mode("sophon", "3.9.4", "-", tmp_path / "site").env()
    monkeypatch.setattr(sys, "path", [*env["PYTHONPATH"].split(":"), *sys.path])
    flags = ["--bmodel", str(bmodel), "--token", str(cfg), "--max-new-tokens", "12"]
    monkeypatch.setattr("sys.argv", ["web_demo.py", *flags])
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=60)
    at.run()
    at.chat_input[0].set_value("Why?").run()
    assert not at.exception, at.exception
    record = at.session_state.conversation.records[-1]
    reasoning, answer = split_reasoning(record["content"], opened=True)
    assert reasoning and not answer
    folded = [e for e in at.main.expander if e.label == "Reasoning"]
    assert len(folded) == 1 and reasoning in folded[0].markdown[0].value
