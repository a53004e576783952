"""The API over the sail (TPU) backend, on the sophon.sail emulator (the one test double): the
same routes answer whole and streamed, with usage counted by the Baichuan2 chat tokenizer."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from edgechat.api import api_routes
from edgechat.config import parse_settings
from edgechat.metrics import ServingMetrics
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import Message
from tests.baichuan_tokenizer_model import REPO, SHARED_MODEL, train_tokenizer

EMULATOR = REPO / "tests" / "sail_emulator"
if str(EMULATOR) not in sys.path:
    sys.path.insert(0, str(EMULATOR))

from sophon import sail  # noqa: E402 — the emulator, found through the path above

QUESTION = "你好，请用一句话介绍你自己。"


@pytest.fixture(scope="module")
def sail_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    token_dir = tmp_path_factory.mktemp("token_config")
    if SHARED_MODEL.is_file():
        (token_dir / "tokenizer.model").symlink_to(SHARED_MODEL)
    else:
        train_tokenizer(token_dir)
    from edgechat.tokenizers.baichuan import BaichuanTokenizer

    bmodel: Path = sail.write_bmodel(
        tmp_path_factory.mktemp("models") / "baichuan2-emulated.bmodel",
        layers=2, hidden=32, heads=4, intermediate=64, max_len=128, vocab=BaichuanTokenizer(token_dir).vocab_size,
    )  # fmt: skip
    rt = load_runtime(parse_settings(["--bmodel", str(bmodel), "--token", str(token_dir)], env={}))
    yield rt
    rt.close()


def test_the_api_answers_from_the_tpu_backend(sail_runtime: Runtime) -> None:
    settings = parse_settings(["--max-new-tokens", "16"], env={})
    routes = api_routes(settings, runtime=lambda: sail_runtime, current=lambda: sail_runtime, metrics=ServingMetrics())
    body = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    with TestClient(Starlette(routes=routes)) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        whole = http.post("/v1/chat/completions", json={**body, "model": model})
        assert whole.status_code == 200, whole.text
        answer = whole.json()
        prompt = len(sail_runtime.tokenizer.render([Message(role="user", content=QUESTION)]))
        assert answer["usage"]["prompt_tokens"] == prompt and 0 < answer["usage"]["completion_tokens"] <= 16
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == answer["choices"][0]["message"]["content"]  # the graph's argmax: same answer both ways
        assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
        assert http.get("/healthz").json()["backend"] == "sail"


def test_the_tpu_refuses_logprobs_and_structured_output_naming_the_parameter(sail_runtime: Runtime) -> None:
    """The bmodel's lm_head returns the argmax id only: no logits to report or to constrain."""
    settings = parse_settings([], env={})
    routes = api_routes(settings, runtime=lambda: sail_runtime, current=lambda: sail_runtime, metrics=ServingMetrics())
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    asks = [({"logprobs": True, "top_logprobs": 2}, "logprobs"), ({"response_format": {"type": "json_object"}},
            "response_format")]  # fmt: skip
    with TestClient(Starlette(routes=routes)) as http:
        for extra, param in asks:
            r = http.post("/v1/chat/completions", json={**body, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            assert "sail" in r.json()["error"]["message"]
