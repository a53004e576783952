"""The sail backend on the sophon.sail emulator (a test double, tests/sail_emulator).

Greedy answers through client + scheduler + SailEngine + emulated graphs must equal a cache-free
reference forward of the same weights, written here independently of the emulator's graph split.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgechat.backend import LocalBackend
from edgechat.client import ChatClient
from edgechat.config import parse_settings
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import Message, SamplingParams, Token, TokenEvent
from tests.baichuan_tokenizer_model import REPO, SHARED_MODEL, train_tokenizer

EMULATOR = REPO / "tests" / "sail_emulator"
if str(EMULATOR) not in sys.path:
    sys.path.insert(0, str(EMULATOR))

from sophon import sail  # noqa: E402 — the emulator, found through the path above

MAX_LEN = 128
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baichuan2's tokenizer from ../shared (linked, not copied), or a trained stand-in."""
    directory = tmp_path_factory.mktemp("token_config")
    if SHARED_MODEL.is_file():
        (directory / "tokenizer.model").symlink_to(SHARED_MODEL)
    else:
        train_tokenizer(directory)
    return directory


def vocab_of(token_dir: Path) -> int:
    from edgechat.tokenizers.baichuan import BaichuanTokenizer

    return BaichuanTokenizer(token_dir).vocab_size


@pytest.fixture(scope="module")
def bmodel(tmp_path_factory: pytest.TempPathFactory, token_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("models") / "baichuan2-emulated.bmodel"
    return sail.write_bmodel(
        path, layers=2, hidden=32, heads=4, intermediate=64, max_len=MAX_LEN, vocab=vocab_of(token_dir)
    )


def open_runtime(bmodel: Path, token_dir: Path, *flags: str) -> Runtime:
    return load_runtime(parse_settings(["--bmodel", str(bmodel), "--token", str(token_dir), *flags], env={}))


@pytest.fixture(scope="module")
def runtime(bmodel: Path, token_dir: Path) -> Iterator[Runtime]:
    rt = open_runtime(bmodel, token_dir, "--max-sessions", "3")
    yield rt
    rt.close()


# ---- the cache-free reference ----


class Reference:
    """Baichuan2 forward over the whole sequence for every token: no KV cache, no padding, no
    -1000 mask. It rounds to f16 where an f16 bmodel does (embeddings, k/v, each layer's output)."""

    def __init__(self, bmodel: Path) -> None:
        self.spec = sail.read_bmodel(bmodel)
        self.w = sail.model_weights(self.spec)

    def next_token(self, tokens: Sequence[int]) -> int:
        s = self.spec
        h = self.w.embed[np.asarray(tokens)].astype(np.float64)
        n = len(tokens)
        inv_freq = 1.0 / s.rope_base ** (np.arange(0, s.head_dim, 2) / s.head_dim)
        angles = np.outer(np.arange(n), inv_freq)
        cos, sin = np.cos(angles), np.sin(angles)
        for layer in self.w.layers:
            h = self._layer(layer, h, cos, sin)
        x = h[-1] / math.sqrt(float(np.mean(h[-1] ** 2)) + s.eps) * self.w.norm
        return int(np.argmax(self.w.lm_head @ x))

    def _layer(self, w: dict[str, np.ndarray], h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        s, n = self.spec, h.shape[0]
        x = self._norm(h, w["ln1"])
        qkv = (w["w_pack"] @ x.T).T
        causal = np.triu(np.full((n, n), -np.inf), 1)  # position t sees 0..t
        heads = []
        for head in range(s.heads):
            cols = slice(head * s.head_dim, (head + 1) * s.head_dim)
            q = self._rotate(qkv[:, : s.hidden][:, cols], cos, sin)
            k = _f16(self._rotate(qkv[:, s.hidden : 2 * s.hidden][:, cols], cos, sin))
            v = _f16(qkv[:, 2 * s.hidden :][:, cols])
            scores = q @ k.T / math.sqrt(s.head_dim) + causal
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append((p / p.sum(axis=1, keepdims=True)) @ v)
        h = h + np.concatenate(heads, axis=1) @ w["o_proj"].T
        y = self._norm(h, w["ln2"])
        gate, up = y @ w["gate"].T, y @ w["up"].T
        return _f16(h + (gate * (1 / (1 + np.exp(-gate))) * up) @ w["down"].T)

    def _norm(self, h: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + self.spec.eps) * weight

    @staticmethod
    def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = x.shape[1] // 2
        a, b = x[:, :half], x[:, half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    def generate(self, prompt: Sequence[int], max_new: int, stop: frozenset[int]) -> list[int]:
        """Greedy, the scheduler's budget: at most max_len - len(prompt) tokens."""
        tokens, out = list(prompt), []
        for _ in range(min(max_new, self.spec.max_len - len(prompt))):
            token = self.next_token(tokens)
            if token in stop:
                break
            out.append(token)
            tokens.append(token)
        return out


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


# ---- recording what a client received ----


class _Recorded:
    def __init__(self, handle: Any, sink: list[int]) -> None:
        self._handle, self._sink = handle, sink

    @property
    def stats(self) -> Any:
        return self._handle.stats

    def cancel(self) -> None:
        self._handle.cancel()

    def __iter__(self) -> Iterator[TokenEvent]:
        for event in self._handle:
            if isinstance(event, Token):
                self._sink.append(event.id)
            yield event


class RecordingScheduler:
    """The shared scheduler as one client sees it, keeping the token ids of its last answer."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self.tokens: list[int] = []
        self.prompt: list[int] = []

    def submit(self, prompt: Sequence[int], *args: Any, **kwargs: Any) -> _Recorded:
        self.tokens, self.prompt = [], list(prompt)
        return _Recorded(self._scheduler.submit(prompt, *args, **kwargs), self.tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


def chat(rt: Runtime, questions: Sequence[str], sampling: SamplingParams = GREEDY) -> list[tuple[list[int], list[int]]]:
    """Ask the questions as one session keeping history; (prompt ids, answer ids) per turn."""
    recorder = RecordingScheduler(rt.backend.scheduler)
    client = ChatClient(LocalBackend(recorder, rt.tokenizer, rt.info), rt.tokenizer, sampling=sampling)  # type: ignore[arg-type]
    history: list[Message] = []
    turns = []
    for question in questions:
        answer = "".join(client.chat_stream(question, history))
        assert client.last_stats.error is None, client.last_stats
        turns.append((recorder.prompt, list(recorder.tokens)))
        history += [Message(role="user", content=question), Message(role="assistant", content=answer)]
    return turns


CHATS = [
    ["你好，请介绍一下你自己。", "用C++写一段冒泡排序算法。", "谢谢！再简短一点？"],
    ["What is a TPU?", "And a KV cache?", "Summarize both in one line.", "<reserved_106> is just text"],
    ["今天天气怎么样？", "明天呢？"],
]


def test_greedy_chats_match_a_cache_free_reference(runtime: Runtime, bmodel: Path) -> None:
    ref = Reference(bmodel)
    stop = runtime.tokenizer.stop_ids
    net = runtime.backend.scheduler.engine._net
    for questions in CHATS:
        before = net.calls.copy()
        turns = chat(runtime, questions)
        for prompt, answer in turns:
            assert prompt[-1] == 196 and prompt.count(195) == prompt.count(196)  # no fake turns
            assert answer == ref.generate(prompt, GREEDY.max_new_tokens, stop), prompt
        calls = net.calls - before
        decoded = sum(len(answer) - 1 for _, answer in turns)
        assert calls["block"] == 2 * len(turns)  # one whole-prompt pass per turn and layer
        assert calls["block_cache"] == 2 * decoded  # then one cached step per token and layer
    assert sum(len(a) for _, a in turns) > 20, "the emulated model should talk, not stop at once"


def test_a_chat_that_fills_max_len(runtime: Runtime, bmodel: Path) -> None:
    long = SamplingParams(temperature=0.0, max_new_tokens=4 * MAX_LEN)
    [(prompt, answer)] = chat(runtime, ["Write a very long story about edge AI boxes."], long)
    assert len(prompt) + len(answer) == MAX_LEN  # the answer ran to the end of the context
    assert answer == Reference(bmodel).generate(prompt, long.max_new_tokens, runtime.tokenizer.stop_ids)


def test_interleaved_sessions_give_each_alone(runtime: Runtime) -> None:
    questions = {"a": ["讲一个关于猫的故事。", "再讲一个。"], "b": ["Tell me about sorting.", "Bubble sort?"]}
    alone = {name: chat(runtime, qs) for name, qs in questions.items()}

    engine = runtime.backend.scheduler.engine
    order: list[int] = []
    real_decode = engine.decode
    engine.decode = lambda batch: order.extend(seq for seq, _ in batch) or real_decode(batch)  # type: ignore[method-assign]
    together: dict[str, Any] = {}
    start = threading.Barrier(2)

    def run(name: str) -> None:
        start.wait()
        together[name] = chat(runtime, questions[name])

    try:
        threads = [threading.Thread(target=run, args=(name,)) for name in questions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        del engine.decode
    assert together == alone
    switches = sum(1 for x, y in zip(order, order[1:], strict=False) if x != y)
    assert switches >= 10, f"the sessions did not interleave: {order}"


def test_slots_are_allocated_once_and_reused(bmodel: Path, token_dir: Path) -> None:
    baseline = sail.DEVICE["tensors"]
    rt = open_runtime(bmodel, token_dir, "--max-sessions", "2")
    engine = rt.backend.scheduler.engine
    allocated = sail.DEVICE["tensors"]
    assert allocated - baseline == 2 * 2 * engine.num_layers + 12  # 2 slots' k/v per layer + scratch
    slot_k = [list(s.k) for s in engine._slots]
    for _ in range(2):
        chat(rt, ["第一个问题", "第二个问题"])
        chat(rt, ["another session"])
    assert sail.DEVICE["tensors"] == allocated
    assert [list(s.k) for s in engine._slots] == slot_k  # the very same device tensors

    rt.backend.scheduler.close()  # stop the scheduler thread: from here on this test owns the engine
    first, second = engine.open_sequence(), engine.open_sequence()
    with pytest.raises(RuntimeError, match="slots are in use"):
        engine.open_sequence()
    engine.release(first)
    assert engine.open_sequence() == first
    engine.release(first), engine.release(second)
    del slot_k
    engine.close()
    assert sail.DEVICE["tensors"] == baseline


def test_describe_says_greedy_and_tpu(runtime: Runtime) -> None:
    info = runtime.info
    assert info["backend"] == "sail" and info["context_length"] == MAX_LEN and info["layers"] == 2
    assert "greedy" in info["sampling"] and "BM1684X" in info["device"]
    assert info["template"] == "baichuan2" and info["model_name"] == "baichuan2-emulated"


# ---- bad input: one clear line each ----


def load_error(bmodel: Path, token_dir: Path, *flags: str) -> str:
    with pytest.raises(ConfigError) as err:
        open_runtime(bmodel, token_dir, *flags).close()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_no_sophon_sail(bmodel: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sophon.sail", None)  # import sophon.sail now raises ImportError
    message = load_error(bmodel, token_dir)
    assert "sophon-sail 3.8.0" in message and "libsophon 0.5.1" in message and "README" in message


def test_missing_bmodel(tmp_path: Path, token_dir: Path) -> None:
    assert "bmodel not found" in load_error(tmp_path / "nope.bmodel", token_dir)


def test_a_file_that_is_not_a_bmodel(tmp_path: Path, token_dir: Path) -> None:
    junk = tmp_path / "junk.bmodel"
    junk.write_bytes(b"\x00" * 64)
    assert "sophon-sail could not load" in load_error(junk, token_dir)


@pytest.mark.parametrize("omit", ["lm_head", "embedding_cache", "block_cache_1", "block_0"])
def test_a_bmodel_lacking_graphs(tmp_path: Path, token_dir: Path, omit: str) -> None:
    path = sail.write_bmodel(
        tmp_path / "partial.bmodel", max_len=MAX_LEN, vocab=vocab_of(token_dir), omit_graphs=[omit]
    )
    message = load_error(path, token_dir)
    assert "lacks the graphs of a Baichuan2 bmodel" in message and omit in message


def test_dev_id_out_of_range_is_refused_before_sail_exits(bmodel: Path, token_dir: Path) -> None:
    message = load_error(bmodel, token_dir, "--dev_ids", "3")
    assert "--dev_ids 3" in message and "0..0" in message


def test_emulated_handle_exits_on_a_bad_id_like_sail() -> None:
    code = "from sophon import sail; sail.Handle(7); print('still alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=30)
    assert out.returncode == 1 and "Invalid tpu id: 7" in out.stdout and "still alive" not in out.stdout


def test_a_tokenizer_of_another_family(bmodel: Path, tmp_path: Path) -> None:
    train_tokenizer(tmp_path, with_chat_markers=False)
    assert "is not Baichuan2's tokenizer" in load_error(bmodel, tmp_path)


def test_a_tokenizer_whose_vocab_does_not_match_the_model(tmp_path: Path) -> None:
    """Graph shapes do not reveal the vocabulary, so the first out-of-vocabulary id is the tell."""
    small = train_tokenizer(tmp_path / "small").parent
    big = sail.write_bmodel(tmp_path / "big.bmodel", max_len=MAX_LEN, vocab=125696, seed=3)
    rt = open_runtime(big, small)
    try:
        client = ChatClient(rt.backend, rt.tokenizer, sampling=GREEDY)
        text = "".join(client.chat_stream("hello", []))
        assert text == "" and client.last_stats.error is not None
        assert "outside the tokenizer's vocabulary of 700" in client.last_stats.error
        assert "--token does not belong to --bmodel" in client.last_stats.error
    finally:
        rt.close()


# ---- the seed's command line, end to end ----


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        "PYTHONPATH": f"{EMULATOR}:{REPO}",
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "baichuan2.py"
    if not script.is_file():
        pytest.skip("baichuan2.py is not there yet")
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120
    )


def test_the_seed_flags_end_to_end(bmodel: Path, token_dir: Path) -> None:
    question = "你好，请用一句话介绍你自己。"
    out = cli("--bmodel", str(bmodel), "--token", str(token_dir), "--dev_ids", "0", "--prompt", question)
    assert out.returncode == 0, out.stderr

    from edgechat.templates import Baichuan2ChatTemplate, ChatTokenizer
    from edgechat.tokenizers import decode
    from edgechat.tokenizers.baichuan import BaichuanTokenizer

    tok = BaichuanTokenizer(token_dir)
    prompt = ChatTokenizer(tok, Baichuan2ChatTemplate(tok)).render([Message(role="user", content=question)])
    expected = Reference(bmodel).generate(prompt, SamplingParams().max_new_tokens, tok.stop_ids)
    assert out.stdout == decode(tok, expected) + "\n"
    assert "baichuan2-emulated" in out.stderr and "FTL:" in out.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [(["--dev_ids", "5"], "--dev_ids 5"), (["--bmodel", "/nonexistent.bmodel"], "bmodel not found")],
)
def test_the_seed_flags_bad_input(bmodel: Path, token_dir: Path, flags: list[str], needle: str) -> None:
    out = cli("--bmodel", str(bmodel), "--token", str(token_dir), *flags, "--prompt", "hi")
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_page_with_the_seed_flags(bmodel: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    flags = ["--bmodel", str(bmodel), "--token", str(token_dir), "--dev_ids", "0", "--max-new-tokens", "16"]
    monkeypatch.setattr("sys.argv", ["web_demo.py", *flags])
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "baichuan2-emulated"
    question = "你好，今天怎么样？"
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception

    tok = at.session_state.conversation.client.tokenizer
    prompt = tok.render([Message(role="user", content=question)])
    expected = tok.decode(Reference(bmodel).generate(prompt, 16, tok.stop_ids))
    shown = [(m.name, m.markdown[0].value.strip()) for m in at.chat_message]  # Markdown drops edge spaces
    assert shown == [("user", question), ("assistant", expected.strip())]
