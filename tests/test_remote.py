"""The remote backend against a real OpenAI-compatible server: llama-cpp-python's
`python -m llama_cpp.server` on the embedded model, on a free 127.0.0.1 port, started and
stopped here. No part of the OpenAI API is mocked."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import openai
import pytest

from edgechat.client import ChatClient
from edgechat.clients import client_for
from edgechat.config import Settings
from edgechat.config_values import default_model_path
from edgechat.errors import ConfigError
from edgechat.remote import RemoteBackend
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import FinishReason, Message, SamplingParams
from harness.servers import ThreadServer, end, free_port
from tests.conftest import GREEDY, REPO, run_terminal

KEY = "edgechat-test-key"
SHORT = replace(GREEDY, max_new_tokens=24)
WAIT_S = 180.0  # three answers one after another (llama_cpp.server takes one at a time) on a loaded box
LONG_PROMPT = "Write a very long story about a dragon who learns to bake bread. Use many chapters."


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        end(self.proc)


def start_server(log: Path, api_key: str | None = KEY) -> Server:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "1024", "--n_threads", "2", "--verbose", "False",
        "--interrupt_requests", "False",  # its default stops a stream when another request arrives
    ]  # fmt: skip
    if api_key:
        cmd += ["--api_key", api_key]
    out = log.open("wb")
    # Its OpenMP threads wait passively, as the engine's do: spinning ones crawl on a shared box.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ready once it answers at all (401 without a key is an answer)
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited {proc.returncode}:\n{server.log_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{server.url}/models", timeout=1).close()
            return server
        except urllib.error.HTTPError:
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    pytest.fail("llama_cpp.server did not start within 60 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("llama_server") / "server.log")
    yield srv
    srv.stop()


def remote(url: str, **options: object) -> Runtime:
    settings = Settings(backend="openai", base_url=url, **options)  # type: ignore[arg-type]
    return load_runtime(settings)


@pytest.fixture(scope="module")
def rt(server: Server) -> Iterator[Runtime]:
    runtime = remote(server.url, api_key=KEY)
    yield runtime
    runtime.close()


def session(runtime: Runtime, sampling: SamplingParams = SHORT) -> ChatClient:
    return client_for(runtime, sampling=sampling)


def terminal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_terminal(*args, env=env, timeout=120)


def test_terminal_answers_through_the_server_with_the_configured_key(server: Server) -> None:
    out = terminal(
        "--backend", "openai", "--base-url", server.url, "--prompt", "What is 2+2?", "--temperature", "0",
        env={"EDGECHAT_API_KEY": KEY},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4" in out.stdout
    assert "SmolLM2" in out.stderr  # the served model's name, read from /v1/models
    assert "FTL:" in out.stderr and "TPS:" in out.stderr


def test_wrong_or_missing_key_is_a_clear_401(server: Server) -> None:
    out = terminal("--base-url", server.url, "--api-key", "wrong", "--prompt", "hi")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "401" in out.stderr and "--api-key" in out.stderr

    runtime = remote(server.url, model_name="any")  # no key; the name given, so no start-up check
    client = session(runtime)
    assert "".join(client.chat_stream("hi")) == ""
    assert client.last_stats.error is not None and "refused the API key (401)" in client.last_stats.error
    assert runtime.backend.health().startswith("server down:")
    runtime.close()


def test_three_sessions_at_once_each_answer_while_a_rejected_one_fails_alone(rt: Runtime) -> None:
    questions = ["What is 2+2?", "What color is the sky?", "Name a fruit.", "word " * 3000]
    clients = [session(rt) for _ in questions]
    answers: dict[int, str] = {}
    peaks: list[int] = []
    # Counted by the barrier's action, before any reader goes on: a released reader drains its
    # short answer at once, and a main thread scheduled after that would see it finished.
    opened = threading.Barrier(
        len(questions) + 1, action=lambda: peaks.append(rt.backend.stats().running), timeout=WAIT_S
    )

    def ask(i: int) -> None:
        stream = clients[i].chat_stream(questions[i])
        first = next(stream, "")
        opened.wait()
        answers[i] = first + "".join(stream)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    opened.wait()  # every session has its own stream open (the server takes them one at a time)
    for t in threads:
        t.join(timeout=WAIT_S)
    assert peaks == [3]  # the rejected one never reached the server
    for i in range(3):
        assert answers[i].strip(), clients[i].last_stats
        assert clients[i].last_stats.error is None
        assert clients[i].last_stats.completion_tokens > 0 and clients[i].last_stats.first_token_s is not None
    assert "4" in answers[0]
    assert answers[3] == "" and "input length is too long" in (clients[3].last_stats.error or "")
    assert rt.backend.stats().running == 0


def test_cancel_closes_the_http_stream(rt: Runtime, server: Server) -> None:
    before = server.log_text().count("Disconnected from client")
    client = session(rt, SamplingParams(temperature=0.0, max_new_tokens=800))
    stream = client.chat_stream(LONG_PROMPT)
    pieces = list(itertools.islice(stream, 5))
    stream.close()  # what Stop or a closed tab does to the page's generator
    assert len(pieces) == 5, (pieces, client.last_stats)
    assert "".join(pieces).strip() and client.last_stats.finish_reason is FinishReason.CANCELLED
    assert client.last_stats.completion_tokens == 5
    # The server itself reports the client gone and stops generating for it.
    deadline = time.monotonic() + 15
    while server.log_text().count("Disconnected from client") == before:
        assert time.monotonic() < deadline, "the server never saw the stream close"
        time.sleep(0.05)
    assert rt.backend.stats().running == 0
    # And it is free: a new question is answered without waiting out 800 tokens.
    after = session(rt)
    assert "4" in "".join(after.chat_stream("What is 2+2?"))
    assert after.last_stats.first_token_s is not None and after.last_stats.first_token_s < 5


def test_wrong_port_is_a_clear_connection_message() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = terminal("--base-url", url, "--prompt", "hi")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "cannot connect to the model server" in out.stderr and "--base-url" in out.stderr

    runtime = remote(url, model_name="any")
    client = session(runtime)
    assert "".join(client.chat_stream("hi")) == ""
    assert "cannot connect to the model server" in (client.last_stats.error or "")
    assert "server down: cannot connect" in runtime.backend.health()
    runtime.close()


def test_a_wrong_path_is_a_clear_404(server: Server) -> None:
    url = server.url.removesuffix("/v1") + "/nope"
    runtime = remote(url, api_key=KEY, model_name="any")
    client = session(runtime)
    assert "".join(client.chat_stream("hi")) == ""
    assert "404" in (client.last_stats.error or "") and "--base-url" in (client.last_stats.error or "")
    runtime.close()
    with pytest.raises(ConfigError, match="404 for its model list"):
        remote(url, api_key=KEY)


def test_server_that_never_answers_times_out_clearly() -> None:
    with socket.socket() as silent:  # accepts the connection, says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        runtime = remote(url, model_name="any", request_timeout=1.0)
        client = session(runtime)
        started = time.monotonic()
        assert "".join(client.chat_stream("hi")) == ""
        assert time.monotonic() - started < 10
        assert "did not answer in time" in (client.last_stats.error or "")
        runtime.close()


def test_server_killed_mid_answer_keeps_the_partial_answer(tmp_path: Path) -> None:
    doomed = start_server(tmp_path / "server.log")
    try:
        runtime = remote(doomed.url, api_key=KEY)
        client = session(runtime, SamplingParams(temperature=0.0, max_new_tokens=800))
        stream = client.chat_stream(LONG_PROMPT)
        pieces = list(itertools.islice(stream, 5))
        assert len(pieces) == 5, (pieces, client.last_stats)
        os.kill(doomed.proc.pid, signal.SIGKILL)
        pieces += list(stream)
        stats = client.last_stats
        assert "".join(pieces).strip()
        assert stats.completion_tokens == len(pieces) >= 5
        assert stats.error is not None and "broke mid-answer" in stats.error and "kept" in stats.error
        runtime.close()
    finally:
        doomed.stop()


def test_the_bad_base_url_is_one_line_exit_2() -> None:
    out = terminal("--backend", "openai", "--base-url", "gpu-box:8000")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--base-url" in out.stderr
    out = terminal("--backend", "openai")
    assert out.returncode == 2 and "needs --base-url" in out.stderr


def test_history_is_trimmed_oldest_first_by_an_estimate_of_tokens(server: Server) -> None:
    long = "x" * 400
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content=long),
        Message(role="assistant", content=long),
        Message(role="user", content="second"),
        Message(role="assistant", content="ok"),
        Message(role="user", content="What is 2+2?"),
    ]
    # A context of 160: the prompt may take 120 tokens, 240 characters at 2 a token (the server tokenizes).
    backend = RemoteBackend(server.url, api_key=KEY, model_name="any", context_length=160, request_timeout=WAIT_S)
    client = ChatClient(backend)
    kept, dropped = client.fit(messages, max_new_tokens=60)
    assert dropped == 2
    assert [m["content"] for m in kept] == ["Be brief.", "second", "ok", "What is 2+2?"]
    with pytest.raises(ValueError, match="input length is too long"):
        client.fit([Message(role="user", content=long)], max_new_tokens=60)
    backend.close()


def test_remote_backend_reports_health_and_the_served_model(rt: Runtime) -> None:
    assert isinstance(rt.backend, RemoteBackend) and rt.tokenizer is None
    assert rt.info["backend"] == "openai" and rt.info["model_name"].startswith("SmolLM2")
    assert rt.backend.health().startswith("server up")


def test_the_page_answers_through_the_server_and_shows_its_health(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EDGECHAT_API_KEY", KEY)
    argv = ["--backend", "openai", "--base-url", server.url, "--temperature", "0", "--max-new-tokens", "24"]
    monkeypatch.setattr("sys.argv", ["web_demo.py", *argv])
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=120)
    at.run()
    at.chat_input[0].set_value("What is 2+2?").run()
    assert not at.exception, at.exception
    answer = at.chat_message[1].markdown[0].value
    assert "4" in answer
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("server up") for c in captions), captions
    assert any(server.url in c for c in captions)


CLOSE_RACE_S = 4.0  # KeepAliveEdge drops a request on a connection idle this long (its 5 s timer racing it)
IDLE_BEFORE_TURN_S = 4.5  # the test's pause: past CLOSE_RACE_S, short of httpx's own 5 s expiry (0.5 s slack each side)


class KeepAliveEdge(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that closes an idle connection the way uvicorn and llama.cpp's
    server do after ~5 s, at the worst moment every time: a request that arrives on a connection
    idle for CLOSE_RACE_S or more (the close and the request crossing on the wire) is read and the
    connection closed without an answer."""

    protocol_version = "HTTP/1.1"  # keep-alive
    idle_since: float | None = None

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if self.idle_since is not None and time.monotonic() - self.idle_since >= CLOSE_RACE_S:
            self.close_connection = True  # the keep-alive timer fired as the request came in
            return
        if self.parse_request():
            getattr(self, "do_" + self.command)()
            self.wfile.flush()
            self.idle_since = time.monotonic()

    def do_GET(self) -> None:  # noqa: N802
        self._send("application/json", json.dumps({"object": "list", "data": [{"id": "edge", "object": "model"}]}))

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        chunk = {"id": "1", "object": "chat.completion.chunk", "created": 0, "model": "edge",
                 "choices": [{"index": 0, "delta": {"content": "four"}, "finish_reason": "stop"}]}  # fmt: skip
        self._send("text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")

    def _send(self, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_turn_after_five_idle_seconds_is_not_lost_to_the_servers_keep_alive_close() -> None:
    """A person's next turn often comes ~5 s after the last request; the server may close that idle
    connection just as the turn is sent on it. edgechat drops idle connections first, so the turn
    goes on a new one; a client that keeps them 5 s (the openai default) loses it, which this
    test also checks so that it can fail."""
    edge = ThreadServer(KeepAliveEdge)
    url = f"http://{edge.address}/v1"
    try:
        runtime = remote(url)  # asks /v1/models for the model's name: one pooled connection
        assert runtime.info["model_name"] == "edge"
        keeps_five = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        keeps_five.models.list()
        time.sleep(IDLE_BEFORE_TURN_S)
        # The control first, right after the pause: a request any later than 5 s idle would go on a new
        # connection (httpx's expiry) and not show the loss, so nothing may run between the two.
        with pytest.raises(openai.APIConnectionError):
            keeps_five.models.list()
        # edgechat's pooled connection is idle at least as long, and any delay only makes it older.
        assert "".join(session(runtime).chat_stream("What is 2+2?")) == "four"
        keeps_five.close()
        runtime.close()
    finally:
        edge.close()
