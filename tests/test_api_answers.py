"""The API's chat completions in-process (Starlette's TestClient, tests/api_fixtures.py) over the
real embedded model: the served model, answers and their usage, streams, stop strings, a
conversation's cache between calls, logprobs and schemas, the room's handout, --api off.
tests/e2e/test_api.py runs the same routes inside a real `streamlit run web_demo.py`."""

from __future__ import annotations

import json
from dataclasses import replace

from edgechat.config import parse_settings
from edgechat.runtime import Runtime
from edgechat.server import LOAD_PATH, app_options
from edgechat.types import Message
from tests.api_fixtures import (
    QUESTION,
    STORY,
    Api,
    api_fixture,  # noqa: F401 — the `api` fixture
)


def test_models_lists_the_one_served_model(api: Api, runtime: Runtime) -> None:
    body = api.http.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == runtime.info["model_name"] and model["max_model_len"] == runtime.backend.max_len


def test_an_answer_with_usage_counted_as_the_tokenizer_does(api: Api, runtime: Runtime) -> None:
    r = api.chat(messages=STORY, temperature=0, max_tokens=12, model=runtime.info["model_name"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == runtime.info["model_name"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length"
    prompt = len(runtime.tokenizer.render([Message(role="user", content=STORY[0]["content"])]))
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 12, "total_tokens": prompt + 12}


def test_a_stream_says_the_same_as_the_whole_answer(api: Api) -> None:
    whole = api.chat(messages=QUESTION, temperature=0, max_tokens=40).json()
    events = api.stream(messages=QUESTION, temperature=0, max_tokens=40, stream_options={"include_usage": True})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert "4" in "".join(pieces)
    finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finish == [whole["choices"][0]["finish_reason"]] == ["stop"]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # the second read part of its prompt from cache
    assert events[-1]["choices"] == [] and [events[-1]["usage"][k] for k in counts] == [
        whole["usage"][k] for k in counts
    ]
    assert all(e["usage"] is None for e in events[:-1])
    assert len({e["id"] for e in events}) == 1 and events[0]["object"] == "chat.completion.chunk"


def test_a_stop_string_ends_the_answer_before_it(api: Api) -> None:
    text = api.chat(messages=QUESTION, temperature=0, max_tokens=24).json()["choices"][0]["message"]["content"]
    word = text.split()[2]
    cut = api.chat(messages=QUESTION, temperature=0, max_tokens=24, stop=[word]).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == text[: text.index(word)]


def test_the_next_turn_reads_only_what_is_new(runtime: Runtime) -> None:
    """An API call carries its whole history; the box keeps the conversation's cache between
    calls (keyed by the caller's address and the conversation's start), as it does for a page."""
    api = Api(runtime, "--trusted-proxy", "testclient")
    me, other = {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.2"}
    try:
        first = api.chat(messages=STORY, temperature=0, max_tokens=16, headers=me).json()
        history = [*STORY, first["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        second = api.chat(messages=history, temperature=0, max_tokens=8, headers=me).json()
        cached = second["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        assert cached >= first["usage"]["prompt_tokens"]  # at least the first prompt was not read again
        shared_before = api.sample("edgechat:prompt_tokens_shared_total", source="api")
        stranger = api.chat(messages=history, temperature=0, max_tokens=8, headers=other).json()
        # another address has a conversation of its own: what it does not read is a copy of the
        # same prefix from the first caller's cache (shared, never reused), and answers the same
        copied = stranger["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        assert api.sample("edgechat:prompt_tokens_shared_total", source="api") - shared_before == copied
        assert stranger["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    finally:
        api.close()


def test_logprobs_and_a_schema_under_penalties_in_process(api: Api) -> None:
    """The penalties sampler sees the prompt, the grammar only the answer: both hold together."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    r = api.chat(messages=QUESTION, temperature=0.7, seed=3, frequency_penalty=0.5, repetition_penalty=1.1,
                 response_format=fmt, logprobs=True, top_logprobs=2)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert list(answer) == ["city"] and isinstance(answer["city"], str)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] and all(len(t["top_logprobs"]) == 2 for t in content)
    assert all(t["logprob"] <= 0 for t in content)


def test_api_off_serves_no_program_routes() -> None:
    """--api off leaves only the page's own load line (edgechat.server's LOAD_PATH)."""
    paths = [route.path for route in app_options(parse_settings(["--api", "off"], env={}))["routes"]]
    assert paths == [LOAD_PATH]


def test_api_callers_get_the_rooms_handout_only_with_handout_api(runtime: Runtime) -> None:
    room = replace(runtime, handout="Workshop handout: every answer is about bread.")
    with_handout = [{"role": "system", "content": room.handout}, *QUESTION]
    sizes = {}
    for flags in ((), ("--handout-api",)):
        a = Api(room, *flags)
        try:
            r = a.chat(messages=QUESTION, temperature=0, max_tokens=1)
            assert r.status_code == 200, r.text
            sizes[flags] = r.json()["usage"]["prompt_tokens"]
        finally:
            a.close()
    assert sizes[()] == len(runtime.tokenizer.render([Message(role="user", content=QUESTION[0]["content"])]))
    assert sizes[("--handout-api",)] == len(runtime.tokenizer.render(with_handout))  # type: ignore[arg-type]
