"""What programs on the LAN get from peers' servers (vLLM, llama.cpp's), against a real
`streamlit run web_demo.py` with no key (anonymous callers) and --cors-origins, called with the
official `openai` client and raw HTTP: per-address limits, a system message alone, usage that
agrees with the stream at a stop string, CORS, over-long conversations, logprobs and structured
output (issue 26). tests/e2e/test_api.py covers the keyed box: keyed programs, CORS off."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import jsonschema
import openai
import pytest

from edgechat.remote import openai_client
from harness.servers import Server

TOOL = "http://tool.lan:3000"  # the origin of a browser-based client the operator allows
STORY = "Write a long story about a dragon who learns to bake bread."
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "likes_tea": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "likes_tea"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def box() -> Iterator[Server]:
    s = Server("--max-new-tokens", "96", "--context-length", "1024", "--cors-origins", TOOL, "--rate-limit", "200")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(box: Server) -> Iterator[openai.OpenAI]:
    c = openai_client(box.url + "/v1", "anyone", timeout=300)  # an open box ignores the key
    yield c
    c.close()


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_an_anonymous_address_is_still_limited_to_its_max_in_flight(client: openai.OpenAI, model: str) -> None:
    one_person = {"X-Forwarded-For": "10.0.1.1"}
    streams = [
        client.chat.completions.create(
            model=model, messages=ask(STORY), max_tokens=96, stream=True, extra_headers=one_person
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        for stream in streams:
            next(iter(stream))  # both are answering
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=model, messages=ask("hi"), max_tokens=4, extra_headers=one_person)
        assert "--max-in-flight" in str(refused.value) and refused.value.response.headers["retry-after"]
        other = {"X-Forwarded-For": "10.0.1.2"}
        assert client.chat.completions.create(model=model, messages=ask("hi"), max_tokens=4, extra_headers=other)
    finally:
        for stream in streams:
            stream.close()


def test_a_system_message_alone_is_answered(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "You are a pirate. Greet the user."}], max_tokens=16
    )
    assert r.choices[0].message.content and r.usage is not None and r.usage.completion_tokens > 0


def test_usage_counts_up_to_the_token_that_completes_the_stop_string(client: openai.OpenAI, model: str) -> None:
    """Peers count the answer's tokens up to the one that completes a stop string; the stream's
    tokens (their logprobs) and its usage agree."""
    common = {"model": model, "messages": ask(STORY), "temperature": 0, "max_tokens": 48, "logprobs": True}
    full = client.chat.completions.create(**common)
    pieces = [bytes(t.bytes or b"") for t in full.choices[0].logprobs.content]
    text = full.choices[0].message.content or ""
    assert b"".join(pieces).decode() == text and len(pieces) == full.usage.completion_tokens
    k = next(i for i in range(8, len(pieces) - 2) if pieces[i].strip().isalpha() and pieces[i + 1].strip().isalpha())
    stop = (pieces[k] + pieces[k + 1]).decode()
    completes = next(n for n in range(1, len(pieces) + 1) if stop in b"".join(pieces[:n]).decode())
    shown = text[: text.find(stop)]
    whole = client.chat.completions.create(**common, stop=[stop])
    assert whole.choices[0].message.content == shown and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == completes == len(whole.choices[0].logprobs.content)
    chunks = list(client.chat.completions.create(**common, stop=[stop], stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == shown
    assert len(streamed) == chunks[-1].usage.completion_tokens == completes


def test_cors_preflight_echoes_an_allowed_origin_only(box: Server) -> None:
    def preflight(origin: str) -> httpx2.Response:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
        return http.options("/v1/chat/completions", headers=headers)

    with httpx2.Client(base_url=box.url, timeout=60) as http:
        ok = preflight(TOOL)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == TOOL
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "POST" in ok.headers["access-control-allow-methods"]
        body = {"messages": ask("hi"), "max_tokens": 2}
        answer = http.post("/v1/chat/completions", json=body, headers={"Origin": TOOL})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == TOOL
        other = preflight("http://evil.example")
        assert other.status_code != 200 and "access-control-allow-origin" not in other.headers
        page = http.get("/", headers={"Origin": TOOL})  # the page is Streamlit's: no CORS there
        assert "access-control-allow-origin" not in page.headers


def test_an_over_long_conversation_is_400_unless_it_asks_for_truncation(client: openai.OpenAI, model: str) -> None:
    turns: list[dict[str, str]] = []
    for i in range(12):  # each turn fits; all of them do not (1024 tokens)
        turns += [{"role": "user", "content": f"Tell me fact {i} about bread. " + "Bread is old. " * 25},
                  {"role": "assistant", "content": "Bread is made of flour and water. " * 8}]  # fmt: skip
    turns.append({"role": "user", "content": "What is bread made of?"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=turns, max_tokens=16)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages", error
    trimmed = client.chat.completions.create(model=model, messages=turns, max_tokens=16, extra_body={"truncate": True})
    assert trimmed.choices[0].message.content and trimmed.usage.prompt_tokens < 1024
    alone = [{"role": "user", "content": "word " * 2000}]  # the last turn alone: trimming cannot help
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=alone, max_tokens=16, extra_body={"truncate": True})


def test_logprobs_whole_and_streamed_in_openais_shape(client: openai.OpenAI, model: str) -> None:
    common = {"model": model, "messages": ask("What is the capital of France?"), "temperature": 0, "max_tokens": 12,
              "logprobs": True, "top_logprobs": 3}  # fmt: skip
    whole = client.chat.completions.create(**common)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens > 0
    assert b"".join(bytes(t.bytes) for t in content).decode() == whole.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        ranked = [a.logprob for a in t.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)  # greedy: the best
    chunks = list(client.chat.completions.create(**common, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    plain = client.chat.completions.create(model=model, messages=ask("hi"), max_tokens=2)
    assert plain.choices[0].logprobs is None  # not asked: null, as OpenAI answers
    for bad, param in (
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**{**common, **bad})
        assert refused.value.body["param"] == param


def test_twenty_json_schema_answers_at_temperature_0_7_all_parse_and_validate(
    client: openai.OpenAI, model: str
) -> None:
    """llama.cpp's grammar sampler, per request, batched with plain answers running beside them."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answers: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one(i: int, constrained: bool) -> None:
        try:
            extra = {"response_format": fmt} if constrained else {}
            r = client.chat.completions.create(
                model=model, messages=ask(f"Describe person number {i} as JSON."), temperature=0.7, seed=i,
                max_tokens=80, extra_headers={"X-Forwarded-For": f"10.0.3.{i + 1}"}, **extra,
            )  # fmt: skip
            answers[i] = r.choices[0].message.content if constrained else None
        except BaseException as err:  # noqa: BLE001 — reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i, i < 20)) for i in range(24)]  # 20 constrained, 4 plain
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    parsed = [json.loads(answers[i]) for i in range(20)]
    for person in parsed:
        jsonschema.validate(person, PERSON)
    assert len({json.dumps(p, sort_keys=True) for p in parsed}) > 1  # sampled, not one canned answer
    anything = client.chat.completions.create(
        model=model, messages=ask('Reply with a JSON object with the key "ok" set to true.'), temperature=0,
        max_tokens=80, response_format={"type": "json_object"},
    )  # fmt: skip
    assert json.loads(anything.choices[0].message.content or "") == {"ok": True}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=ask("hi"), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})  # fmt: skip
    assert refused.value.body["param"] == "response_format"
