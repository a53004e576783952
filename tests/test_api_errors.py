"""The API's failures in-process (tests/api_fixtures.py) over the real embedded model: every error
status in OpenAI's shape — bad bodies, too long, unknown routes, too big, a full queue, a dead
engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from edgechat.api import MAX_BODY_BYTES
from edgechat.config import parse_settings
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import ChatRequest, Message, SamplingParams, Text
from tests.api_fixtures import (
    JSON,
    QUESTION,
    STORY,
    Api,
    api_fixture,  # noqa: F401 — the `api` fixture
    error_of,
)


def test_bad_json_missing_messages_and_bad_parameters_are_400(api: Api) -> None:
    error_of(api.http.post("/v1/chat/completions", content=b"{not json", headers=JSON), 400)
    assert error_of(api.chat(model=None), 400)["param"] == "messages"
    assert error_of(api.chat(messages=QUESTION, top_p=7), 400)["param"] == "top_p"
    deep = b"[" * 100_000 + b"]" * 100_000  # under the cap, deeper than the parser goes
    error_of(api.http.post("/v1/chat/completions", content=deep, headers=JSON), 400)


def test_a_body_not_declared_json_is_415_as_vllm_answers(api: Api) -> None:
    """A cross-site page may POST text/plain or a form without a CORS preflight: never parsed."""
    body = json.dumps({"messages": QUESTION})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": kind} if kind else {}
        assert "application/json" in error_of(api.http.post("/v1/chat/completions", content=body, headers=headers),
                                              415)["message"]  # fmt: skip
    r = api.http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_a_prompt_longer_than_the_context_is_400(api: Api, runtime: Runtime) -> None:
    long = "word " * (runtime.backend.max_len * 2)
    err = error_of(api.chat(messages=[{"role": "user", "content": long}]), 400)
    assert err["code"] == "context_length_exceeded" and "too long" in err["message"]


def test_an_unknown_model_or_endpoint_is_404_and_a_wrong_method_405(api: Api) -> None:
    assert error_of(api.chat(messages=QUESTION, model="gpt-4o"), 404)["code"] == "model_not_found"
    assert "chat/completions" in error_of(api.http.post("/v1/completions", json={"prompt": "x"}), 404)["message"]
    error_of(api.http.get("/v1/embeddings"), 404)
    error_of(api.http.get("/v1/chat/completions"), 405)


def test_a_body_over_the_cap_is_413(api: Api) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]})
    error_of(api.http.post("/v1/chat/completions", content=body, headers=JSON), 413)
    assert api.sample("edgechat:api_errors_total", status="413") == 1


@pytest.fixture
def one_slot() -> Iterator[Runtime]:
    rt = load_runtime(parse_settings(["--context-length", "512", "--max-running", "1", "--max-queue", "0"], env={}))
    yield rt
    rt.close()


def test_a_full_queue_is_429_with_retry_after(one_slot: Runtime) -> None:
    api = Api(one_slot)
    busy = one_slot.backend.generate(
        ChatRequest([Message(role="user", content=STORY[0]["content"])], SamplingParams(max_new_tokens=400))
    )
    try:
        assert isinstance(next(e for e in busy if isinstance(e, Text)), Text)  # it holds the only sequence
        r = api.chat(messages=QUESTION)
        assert error_of(r, 429)["code"] == "server_busy" and int(r.headers["retry-after"]) >= 1
        assert api.sample("edgechat:requests_total", finished_reason="error", source="api") == 1
        busy.cancel()
        list(busy)
        assert api.chat(messages=QUESTION, max_tokens=4).status_code == 200  # free again
    finally:
        busy.cancel()
        api.close()


def test_a_dead_engine_is_503_on_every_route(one_slot: Runtime) -> None:
    api = Api(one_slot)
    scheduler = one_slot.backend.scheduler  # type: ignore[attr-defined]

    def broken_decide(*_: object) -> None:
        raise RuntimeError("scheduler bug")

    scheduler._planner.decide = broken_decide  # the worker dies on its next step, as in test_faults
    list(one_slot.backend.generate(ChatRequest([Message(role="user", content="hi")], SamplingParams())))
    try:
        assert not one_slot.alive
        assert error_of(api.chat(messages=QUESTION), 503)["code"] == "engine_down"
        assert api.http.get("/healthz").status_code == 503 and api.http.get("/healthz").json()["alive"] is False
        assert api.sample("edgechat:engine_alive") == 0
    finally:
        api.close()
