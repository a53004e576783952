"""The API as programs on the LAN meet it: one real `streamlit run web_demo.py` (page + API +
metrics on one port, with --server-api-key) for the whole module, called by the official
`openai` client, scraped with prometheus_client's own parser, shared with real browser sessions,
and used by edgechat's own remote backend."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from edgechat.api import api_routes
from edgechat.client import ChatClient
from edgechat.config import parse_settings
from edgechat.metrics import ServingMetrics
from edgechat.remote import openai_client
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import Message, SamplingParams, Text
from harness.browser import person_options
from harness.servers import Server

KEY = "e2e-api-key"
STORY = "Write a long story about a dragon who learns to bake bread."
QUESTIONS = [  # four of the 16 API streams ask each, from one address at once (its conversation's cache key is taken)
    "What is 2+2?",
    "What color is the sky on a clear day?",
    "What is the opposite of hot?",
    "What is the capital of France?",
]
PAGE_QUESTIONS = {"alice": ("What is 3+3?", "6"), "bob": ("What color is grass?", "green")}
PAGE_OTHERS = ["Name a fruit.", "Name a bird.", "Say hello.", "Name a color.", "Name a tree.", "Name a month."]
ANSWER_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def box() -> Iterator[Server]:
    # The tests call from 127.0.0.1, named the trusted proxy so that X-Forwarded-For stands for the
    # programs of several people; --max-in-flight stays at its default (2 per address).
    flags = ("--temperature", "0", "--max-new-tokens", "96", "--context-length", "1024", "--max-sessions", "8",
             "--server-api-key", KEY, "--trusted-proxy", "127.0.0.1", "--rate-limit", "60")  # fmt: skip
    s = Server(*flags)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(box: Server) -> Iterator[openai.OpenAI]:
    c = openai_client(box.url + "/v1", KEY, timeout=300)  # drops idle connections before the server does
    yield c
    c.close()


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def scrape(box: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(box.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(box: Server, name: str, **labels: str) -> float:
    return scrape(box)[(name, tuple(sorted(labels.items())))]


def decoding(box: Server) -> float:
    figures = scrape(box)
    return figures[("edgechat:num_requests_running", ())] - figures[("edgechat:num_requests_prefilling", ())]


def wait_until(predicate: Any, timeout: float) -> bool:
    """Poll a condition until it holds or `timeout` passes (bounded; no fixed sleep decides)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def greedy(client: openai.OpenAI, model: str, question: str, max_tokens: int = 24) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, seed=1, max_tokens=max_tokens
    )
    return r.choices[0].message.content or ""


def test_the_openai_client_whole_and_streamed(client: openai.OpenAI, model: str, runtime: Runtime) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}]
    whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32)
    text = whole.choices[0].message.content or ""
    assert "4" in text and whole.choices[0].finish_reason in ("stop", "length")
    prompt = len(runtime.tokenizer.render([Message(role=m["role"], content=m["content"]) for m in messages]))
    assert whole.usage is not None and whole.usage.prompt_tokens == prompt
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
        prompt,
        whole.usage.completion_tokens,
    )
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0  # same start
    cut = client.chat.completions.create(model=model, messages=[{"role": "user", "content": STORY}], max_tokens=7)
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None and cut.usage.completion_tokens == 7


def test_metrics_parse_and_their_counters_move(box: Server, client: openai.OpenAI, model: str) -> None:
    before = scrape(box)
    greedy(client, model, "What is 2+2?")
    after = scrape(box)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before[key]

    assert moved("edgechat:requests_total", finished_reason="stop", source="api") == 1
    assert moved("edgechat:generation_tokens_total", source="api") > 0
    assert moved("edgechat:prompt_tokens_total", source="api") > 0
    assert moved("edgechat:time_to_first_token_seconds_count", source="api") == 1
    info = next(labels for (name, labels) in after if name == "edgechat:model_info")
    assert dict(info)["backend"] == "llamacpp" and dict(info)["model_name"] == model
    assert ("edgechat:page_sessions_open", ()) in after and after[("edgechat:engine_alive", ())] == 1


def test_closing_a_stream_frees_its_sequence(box: Server, client: openai.OpenAI, model: str) -> None:
    cancelled = metric(box, "edgechat:requests_total", finished_reason="cancelled", source="api")
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": STORY}], max_tokens=96, stream=True
    )
    for n, _ in enumerate(stream):
        if n == 5:
            break
    assert metric(box, "edgechat:num_requests_running") == 1
    stream.close()
    assert wait_until(lambda: metric(box, "edgechat:num_requests_running") == 0, timeout=2.0)
    assert wait_until(
        lambda: metric(box, "edgechat:requests_total", finished_reason="cancelled", source="api") == cancelled + 1, 2.0
    )


def test_hanging_up_on_a_whole_answer_frees_it_too(box: Server, model: str) -> None:
    cancelled = metric(box, "edgechat:requests_total", finished_reason="cancelled", source="api")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": STORY}], "max_tokens": 96}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{box.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", box.port), timeout=10) as conn:
        conn.sendall(head.encode() + body)
        assert wait_until(lambda: decoding(box) == 1, timeout=60)  # past its prompt: the engine's steps are short
    assert wait_until(lambda: metric(box, "edgechat:num_requests_running") == 0, timeout=2.0)
    assert metric(box, "edgechat:requests_total", finished_reason="cancelled", source="api") == cancelled + 1


def test_auth_and_error_statuses_on_the_real_server(box: Server, model: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=box.url + "/v1", api_key="wrong", max_retries=0).models.list()
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx2.Client(base_url=box.url, timeout=30) as http:
        assert http.get("/v1/models").status_code == 401
        health = http.get("/healthz").json()  # open to all, without the key; loaded_at is a time
        assert health == {"alive": True, "backend": "llamacpp", "model": model, "loaded_at": health["loaded_at"]}
        assert isinstance(health["loaded_at"], float)
        post = "/v1/chat/completions"
        cases = [
            (http.post(post, content=b"{", headers={**auth, "Content-Type": "application/json"}), 400),
            (http.post(post, json={"model": model}, headers=auth), 400),
            (http.post(post, json={"messages": [{"role": "user", "content": "hi"}], "model": "nope"}, headers=auth),
             404),
            (http.get("/v1/anything", headers=auth), 404),  # JSON, not the page's index.html
            (http.get(post, headers=auth), 405),
            (http.post(post, content=b"x" * (2 << 20), headers={**auth, "Content-Type": "application/json"}), 413),
            # a cross-site page's "simple" POST (no preflight): never parsed (vLLM's 415)
            (http.post(post, content=json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
                       headers={**auth, "Content-Type": "text/plain"}), 415),
        ]  # fmt: skip
        for response, status in cases:
            assert response.status_code == status and "error" in response.json(), response.text[:200]


def test_cors_is_off_by_default(box: Server) -> None:
    """No --cors-origins: no CORS header, so a browser keeps other sites' pages from reading /v1."""
    asking = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    with httpx2.Client(base_url=box.url, timeout=30) as http:
        preflight = http.options("/v1/chat/completions", headers=asking)
        plain = http.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {KEY}"})
    assert preflight.status_code != 200 and "access-control-allow-origin" not in preflight.headers
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_sixteen_keyed_streams_from_one_address_and_eight_browser_sessions_at_once(
    box: Server, client: openai.OpenAI, model: str, browser: Any
) -> None:
    """A program holding the server key (Open WebUI, Dify: many people behind one address) gets the
    server's capacity, not one person's --max-in-flight (2): 16 streams from ONE address and 8
    people in browsers, all answered, none refused."""
    alone = {q: greedy(client, model, q, max_tokens=16) for q in QUESTIONS}
    together: dict[int, str] = {}
    errors: list[BaseException] = []
    asked = QUESTIONS * 4

    def stream(i: int) -> None:
        try:
            person = {"X-Forwarded-For": "10.0.0.1"}  # one address: the program in front of the box
            chunks = client.chat.completions.create(model=model, messages=[{"role": "user", "content": asked[i]}],
                                                    temperature=0, seed=1, max_tokens=16, stream=True,
                                                    extra_headers=person)  # fmt: skip
            together[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except BaseException as err:  # noqa: BLE001 — reported by the assert below
            errors.append(err)

    pages = {}
    page_asks = {**PAGE_QUESTIONS, **{f"person{i}": (q, None) for i, q in enumerate(PAGE_OTHERS)}}
    for name in page_asks:
        context = browser.new_context(**person_options())  # each person from an address of their own
        page = context.new_page()
        page.goto(box.url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
        pages[name] = (context, page)
    assert wait_until(lambda: metric(box, "edgechat:page_sessions_open") >= len(page_asks), timeout=30)
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(asked))]
    for t in threads:
        t.start()
    for name, (question, _) in page_asks.items():
        box_input = pages[name][1].get_by_test_id("stChatInputTextArea")
        box_input.fill(question)
        box_input.press("Enter")
    for t in threads:
        t.join(300)
    assert not errors, [(err, err.__cause__) for err in errors]  # the cause says which connection failed how
    # greedy: each stream says what its question gets alone, whatever ran beside it
    assert [together.get(i) for i in range(len(asked))] == [alone[q] for q in asked]
    assert len(set(alone.values())) == len(QUESTIONS)  # four different answers: a mix-up would show
    for name, (question, needle) in page_asks.items():
        page = pages[name][1]
        page.get_by_test_id("stChatMessage").filter(has_text="tok/s").first.wait_for(timeout=ANSWER_TIMEOUT_MS)
        shown = [m.inner_text() for m in page.get_by_test_id("stChatMessage").all()]
        assert len(shown) == 2 and question in shown[0] and (needle is None or needle in shown[1].lower()), shown
        assert not any(q in text for q in QUESTIONS for text in shown)  # no API question leaks into a page
    for context, _ in pages.values():
        context.close()
    assert wait_until(lambda: metric(box, "edgechat:num_requests_running") == 0, timeout=5)


@pytest.fixture(scope="module")
def remote(box: Server) -> Iterator[Runtime]:
    """edgechat's own remote backend, pointed at this box's API."""
    rt = load_runtime(parse_settings(["--base-url", box.url + "/v1", "--api-key", KEY], env={}))
    yield rt
    rt.close()


def test_edgechats_remote_backend_pointed_at_this_box_answers(
    remote: Runtime, client: openai.OpenAI, model: str
) -> None:
    assert remote.info["model_name"] == model
    events = list(ChatClient(remote.backend).stream(
        [Message(role="user", content="What is 2+2?")], SamplingParams(temperature=0, seed=1, max_new_tokens=24)
    ))  # fmt: skip
    text = "".join(e.text for e in events if isinstance(e, Text))
    assert text == greedy(client, model, "What is 2+2?")
    done = events[-1]
    assert done.stats.finish_reason is not None and done.stats.prompt_tokens > 0  # the box sent usage


def test_an_api_in_front_of_a_remote_backend(remote: Runtime, client: openai.OpenAI, model: str) -> None:
    """edgechat in front of another server (here: this box) serves the same API."""
    settings = parse_settings(["--base-url", "http://unused/v1"], env={})
    app = Starlette(routes=api_routes(settings, runtime=lambda: remote, current=lambda: remote,
                                      metrics=ServingMetrics()))  # fmt: skip
    with TestClient(app) as front:
        assert front.get("/v1/models").json()["data"][0]["id"] == model
        body = {"messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0, "seed": 1,
                "max_tokens": 24}  # fmt: skip
        answer = front.post("/v1/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["content"] == greedy(client, model, "What is 2+2?")
        assert answer["usage"]["prompt_tokens"] > 0
        r = front.post("/v1/chat/completions", json={**body, "model": "nope"})
        assert r.status_code == 404
        # what the server behind may lack is refused, naming the parameter (README: not passed on)
        for extra, param in (({"logprobs": True}, "logprobs"), ({"response_format": {"type": "json_object"}},
                                                                  "response_format")):  # fmt: skip
            r = front.post("/v1/chat/completions", json={**body, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert front.get("/metrics").status_code == 200 and front.get("/healthz").json()["backend"] == "openai"
