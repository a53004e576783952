"""The API's routes in-process (Starlette's TestClient) over the real embedded model: answers and
their usage, every error status in OpenAI's shape, auth, and the counters /metrics shows.
tests/e2e/test_api.py runs the same routes inside a real `streamlit run web_demo.py`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from edgechat import metrics as metrics_module
from edgechat.access import ClientLimits
from edgechat.api import MAX_BODY_BYTES, api_routes
from edgechat.config import parse_settings
from edgechat.metrics import ServingMetrics
from edgechat.runtime import Runtime, load_runtime
from edgechat.server import LOAD_PATH, app_options
from edgechat.types import ChatRequest, Message, SamplingParams, Text

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
JSON = {"Content-Type": "application/json"}


class Api:
    """A TestClient on the API routes over `rt`, with its own metrics registry."""

    def __init__(self, rt: Runtime, *flags: str) -> None:
        self.rt = rt
        self.settings = parse_settings(list(flags), env={})
        self.metrics = ServingMetrics()
        self.limits = ClientLimits(self.settings.rate_limit, self.settings.max_in_flight)  # the defaults, fresh
        routes = api_routes(self.settings, runtime=lambda: rt, current=lambda: rt, metrics=self.metrics,
                            limits=self.limits)  # fmt: skip
        app = Starlette(routes=routes)
        self.http = TestClient(app)
        metrics_module.attach(self.metrics)

    def close(self) -> None:
        metrics_module.detach(self.metrics)
        self.http.close()

    def chat(self, headers: dict[str, str] | None = None, **body: Any) -> Any:
        return self.http.post("/v1/chat/completions", json=body, headers=headers)

    def stream(self, **body: Any) -> list[dict[str, Any]]:
        """The data of each SSE event, up to and without [DONE] (which must come)."""
        events = []
        with self.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    if line == "data: [DONE]":
                        return events
                    events.append(json.loads(line[6:]))
        raise AssertionError(f"no [DONE] after {events[-3:]}")

    def sample(self, name: str, **labels: str) -> float:
        text = self.http.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError(name)


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    a = Api(runtime, "--max-new-tokens", "64")
    yield a
    a.close()


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


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


def test_answers_are_counted_in_metrics_as_api(api: Api) -> None:
    before = api.sample("edgechat:requests_total", finished_reason="length", source="api")
    tokens = api.sample("edgechat:generation_tokens_total", source="api")
    assert api.chat(messages=STORY, temperature=0, max_tokens=5).status_code == 200
    assert api.sample("edgechat:requests_total", finished_reason="length", source="api") == before + 1
    assert api.sample("edgechat:generation_tokens_total", source="api") == tokens + 5
    assert api.sample("edgechat:time_to_first_token_seconds_count", source="api") >= 1
    assert api.sample("edgechat:num_requests_running") == 0
    response = api.http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain") and "What is" not in response.text


def test_metrics_say_where_the_engine_thread_spends_its_time(api: Api) -> None:
    """An operator profiling the box reads the split from /metrics: a step's wall time holds the
    llama_decode, sampling and cache-move seconds, and an answer adds steps and decode time."""
    names = ("scheduler_steps", "scheduler_step_seconds", "engine_decode_seconds", "engine_sampling_seconds")
    before = {n: api.sample(f"edgechat:{n}_total") for n in names}
    assert api.chat(messages=STORY, temperature=0, max_tokens=5).status_code == 200
    after = {n: api.sample(f"edgechat:{n}_total") for n in names}
    assert after["scheduler_steps"] >= before["scheduler_steps"] + 5
    assert after["engine_decode_seconds"] > before["engine_decode_seconds"]
    parts = sum(api.sample(f"edgechat:{n}_total") for n in ("engine_decode_seconds", "engine_sampling_seconds"))
    assert parts + api.sample("edgechat:engine_cache_move_seconds_total") <= after["scheduler_step_seconds"]


def test_healthz_names_backend_and_model(api: Api, runtime: Runtime) -> None:
    r = api.http.get("/healthz")
    assert r.status_code == 200
    expected = {
        "alive": True,
        "backend": "llamacpp",
        "model": runtime.info["model_name"],
        "loaded_at": runtime.loaded_at,
    }
    assert r.json() == expected


# ---- errors, each in OpenAI's shape with its status ----


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


# ---- access ----


def test_without_a_key_or_password_the_api_is_open(api: Api) -> None:
    assert api.http.get("/v1/models").status_code == 200


def test_a_server_key_is_required_as_bearer(runtime: Runtime) -> None:
    api = Api(runtime, "--server-api-key", "s3cret", "--password", "pagepass")
    try:
        error_of(api.http.get("/v1/models"), 401)
        r = api.http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert error_of(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        error_of(api.http.get("/v1/models", headers={"Authorization": "Bearer pagepass"}), 401)  # the key wins
        error_of(api.http.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        assert api.http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        error_of(api.chat(messages=QUESTION), 401)
        assert api.http.get("/metrics").status_code == 200 and api.http.get("/healthz").status_code == 200
    finally:
        api.close()


def test_the_page_password_is_the_bearer_when_no_key_is_set(runtime: Runtime) -> None:
    api = Api(runtime, "--password", "pagepass")
    try:
        error_of(api.http.get("/v1/models"), 401)
        assert api.http.get("/v1/models", headers={"Authorization": "Bearer pagepass"}).status_code == 200
    finally:
        api.close()


def test_wrong_keys_lock_the_address_out_like_the_password_form(runtime: Runtime) -> None:
    api = Api(runtime, "--server-api-key", "s3cret")
    wrong = {"Authorization": "Bearer guess"}
    try:
        statuses = [api.http.get("/v1/models", headers=wrong).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        r = api.http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})  # even the right key, for now
        assert error_of(r, 429)["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    finally:
        api.close()


def test_password_tries_are_shared_with_the_page(runtime: Runtime) -> None:
    api = Api(runtime, "--password", "pagepass")
    try:
        for _ in range(5):  # the page's form spent this address's tries
            assert api.limits.password_try("testclient") == 0
        error_of(api.http.get("/v1/models", headers={"Authorization": "Bearer guess"}), 429)
    finally:
        api.close()


def test_questions_a_minute_per_address(runtime: Runtime) -> None:
    api = Api(runtime, "--rate-limit", "2")
    try:
        assert [api.chat(messages=QUESTION, max_tokens=1).status_code for _ in range(2)] == [200, 200]
        r = api.chat(messages=QUESTION, max_tokens=1)
        assert "--rate-limit" in error_of(r, 429)["message"] and int(r.headers["retry-after"]) >= 1
        assert api.sample("edgechat:api_errors_total", status="429") == 1
    finally:
        api.close()


def test_answers_in_flight_per_address_counting_the_page_too(runtime: Runtime) -> None:
    api = Api(runtime, "--max-in-flight", "2", "--trusted-proxy", "testclient")
    tabs = [api.limits.acquire("10.0.0.7") for _ in range(2)]  # two page tabs of that person are answering
    behind_proxy = {"X-Forwarded-For": "10.0.0.7"}
    try:
        third = api.chat(messages=QUESTION, max_tokens=1, headers=behind_proxy)
        assert "--max-in-flight" in error_of(third, 429)["message"] and third.headers["retry-after"]
        other = api.chat(messages=QUESTION, max_tokens=1, headers={"X-Forwarded-For": "10.0.0.8"})
        assert other.status_code == 200  # someone else is not held up
        spoofed = api.chat(messages=QUESTION, max_tokens=1, headers={"X-Forwarded-For": "10.0.0.8, 10.0.0.7"})
        error_of(spoofed, 429)  # only the proxy's own (last) entry counts
        tabs[0]()
        assert api.chat(messages=QUESTION, max_tokens=1, headers=behind_proxy).status_code == 200
        assert api.limits.in_flight("10.0.0.7") == 1  # the API answer gave its slot back; one tab still holds one
    finally:
        for release in tabs:
            release()
        api.close()


def test_a_program_holding_the_server_key_is_not_limited_per_address(runtime: Runtime) -> None:
    """Open WebUI or Dify send many people's requests from one address: the server key gives them
    the box's capacity. The page password as a bearer is a person's: limited as the page is."""
    for flags, keyed_status in ((("--server-api-key", "k"), 200), (("--password", "k"), 429)):
        api = Api(runtime, "--max-in-flight", "1", "--rate-limit", "1", *flags)
        held = api.limits.acquire("testclient")  # that address already has its one answer running
        try:
            r = api.chat(messages=QUESTION, max_tokens=1, headers={"Authorization": "Bearer k"})
            assert r.status_code == keyed_status, (flags, r.text)
            if keyed_status == 200:  # and again: no --rate-limit of 1 a minute either
                assert (
                    api.chat(messages=QUESTION, max_tokens=1, headers={"Authorization": "Bearer k"}).status_code == 200
                )
        finally:
            held()
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
