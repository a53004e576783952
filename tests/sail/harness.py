"""Shared pieces of the sail tests: the sophon.sail emulator (a test double) on the path, the four
emulated installs (sail 3.8 / 3.9 x int8 / int4 bmodel), a cache-free reference forward and the
helpers that run a chat through the real client + scheduler + SailEngine. Fixtures: conftest.py.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgechat.backend import LocalBackend
from edgechat.clients import client_for
from edgechat.config import parse_settings
from edgechat.errors import ConfigError
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import Message, SamplingParams, Token, TokenEvent, TurnStats
from tests.baichuan_tokenizer_model import REPO
from tests.conftest import GREEDY

EMULATOR = REPO / "tests" / "sail_emulator"
if str(EMULATOR) not in sys.path:
    sys.path.insert(0, str(EMULATOR))

from sophon import sail  # noqa: E402 — the emulator, found through the path above

MAX_LEN = 128
GREEDY_24 = replace(GREEDY, max_new_tokens=24)  # answers that leave a MAX_LEN context room for the prompt


@dataclass(frozen=True)
class Mode:
    """One emulated install: the wheel (distribution, version) and the bmodel's quantization."""

    dist: str
    version: str
    quant: str
    site: Path  # holds the wheel's dist-info; on sys.path (and PYTHONPATH of subprocesses)

    @property
    def index_keyed(self) -> bool:
        return not self.version.startswith("3.8")

    @property
    def kv_dtype(self) -> str:
        return "FLOAT16" if self.quant == "int8" else "BFLOAT16"

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for a subprocess that runs on this emulated install."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(Path.home()),
            "PYTHONPATH": f"{self.site}{os.pathsep}{EMULATOR}{os.pathsep}{REPO}",
            **extra,
        }


# sail 3.8.0 as the seed's arm (SoC) wheel, 3.9.4 as an x86 PCIe wheel: both distribution names
MODES = [
    ("sophon_arm", "3.8.0", "int8"),
    ("sophon_arm", "3.8.0", "int4"),
    ("sophon", "3.9.4", "int8"),
    ("sophon", "3.9.4", "int4"),
]
MODE_IDS = [f"sail{v}-{q}" for _, v, q in MODES]


def vocab_of(token_dir: Path) -> int:
    from edgechat.tokenizers.baichuan import BaichuanTokenizer

    return BaichuanTokenizer(token_dir).vocab_size


def open_runtime(bmodel: Path, token_dir: Path, *flags: str) -> Runtime:
    return load_runtime(parse_settings(["--bmodel", str(bmodel), "--token", str(token_dir), *flags], env={}))


def load_error(bmodel: Path, token_dir: Path, *flags: str) -> str:
    with pytest.raises(ConfigError) as err:
        open_runtime(bmodel, token_dir, *flags).close()
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- the cache-free reference ----


def round_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


def round_f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def round_bf16(a: np.ndarray) -> np.ndarray:
    """To bfloat16 and back, round to nearest even, written here apart from the emulator's."""
    f = a.astype(np.float32)
    bits = f.view(np.uint32).astype(np.int64)
    kept = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return kept.astype(np.uint32).view(np.float32).astype(np.float64)


class Reference:
    """Baichuan2 forward over the whole sequence for every token: no KV cache, no padding, no
    -1000 mask. It rounds where the bmodel hands data between graphs: hidden states to F32 and
    K/V to F16 (int8 bmodel) or BF16 (int4 bmodel)."""

    def __init__(self, bmodel: Path) -> None:
        self.spec = sail.read_bmodel(bmodel)
        self.w = sail.model_weights(self.spec)
        self.round_kv = round_f16 if self.spec.quant == "int8" else round_bf16

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
            k = self.round_kv(self._rotate(qkv[:, s.hidden : 2 * s.hidden][:, cols], cos, sin))
            v = self.round_kv(qkv[:, 2 * s.hidden :][:, cols])
            scores = q @ k.T / math.sqrt(s.head_dim) + causal
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append((p / p.sum(axis=1, keepdims=True)) @ v)
        h = h + np.concatenate(heads, axis=1) @ w["o_proj"].T
        y = self._norm(h, w["ln2"])
        gate, up = y @ w["gate"].T, y @ w["up"].T
        return round_f32(h + (gate * (1 / (1 + np.exp(-gate))) * up) @ w["down"].T)

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


# ---- chatting through the real client and scheduler, keeping the ids ----


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


@dataclass
class Turn:
    prompt: list[int]
    answer: list[int]
    stats: TurnStats


def recording_backend(rt: Runtime) -> tuple[LocalBackend, RecordingScheduler]:
    """The runtime's own backend (its answer room included) over a scheduler that keeps ids."""
    recorder = RecordingScheduler(rt.backend.scheduler)  # type: ignore[attr-defined]
    backend = copy.copy(rt.backend)
    backend.scheduler = recorder  # type: ignore[attr-defined]
    return backend, recorder  # type: ignore[return-value]


def chat(rt: Runtime, questions: Sequence[str], sampling: SamplingParams = GREEDY_24) -> list[Turn]:
    """Ask the questions as one session keeping history; prompt ids, answer ids and stats per turn."""
    backend, recorder = recording_backend(rt)
    client = client_for(replace(rt, backend=backend), sampling=sampling)
    history: list[Message] = []
    turns = []
    for question in questions:
        answer = "".join(client.chat_stream(question, history))
        assert client.last_stats.error is None, client.last_stats
        turns.append(Turn(recorder.prompt, list(recorder.tokens), client.last_stats))
        history += [Message(role="user", content=question), Message(role="assistant", content=answer)]
    return turns


def run_python(mode: Mode, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter on the emulated install (for paths that end the process)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=mode.env(**env), cwd=REPO, timeout=60
    )


def cli(mode: Mode | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The seed's terminal program, baichuan2.py, on the emulated install (None: no wheel metadata,
    the emulator's default API)."""
    script = REPO / "baichuan2.py"
    environ = mode.env(**env) if mode is not None else Mode("-", "-", "-", EMULATOR).env(**env)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=environ, cwd=REPO, timeout=120
    )
