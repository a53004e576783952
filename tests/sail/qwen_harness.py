"""Sophgo LLM-TPU bmodels (Qwen2.5/Qwen3/DeepSeek-R1-Distill/Llama layout) on the sail emulator:
a tiny config folder made here (a byte-level BPE `tokenizer.json` trained on a few sentences with
Hugging Face's `tokenizers`, a ChatML chat template in `tokenizer_config.json`; no download), the
emulated variants, and a plain numpy reference of the same tiny Qwen2-style model written apart
from the emulator's graph split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.sail.harness import Mode, Reference, round_bf16, round_f16, round_f32, sail

QWEN_LEN = 256  # LLM-TPU bmodels: room for the template's default system prompt in a tiny vocabulary
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]  # Qwen3 / DeepSeek-R1 mark reasoning with these (added, not special)
# A ChatML template shaped like Qwen2.5-Instruct's (written here): a default system prompt,
# <|im_start|>role\n ... <|im_end|>\n per message, the assistant's turn opened at the end.
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You are a helpful assistant. What is a TPU? A tensor processing unit runs neural networks.",
    "The KV cache keeps keys and values of earlier tokens, so a follow-up turn reads only new text.",
    "Edge boxes serve a whole room from one model: a queue, a page and an API on the same port.",
    "你好，请介绍一下你自己。我是一个运行在边缘盒子上的助手。今天天气怎么样？",
    "def bubble_sort(a):\n    for i in range(len(a)):\n        pass\n",
]


def write_token_config(directory: Path, template: str = CHATML) -> Path:
    """tokenizer.json + tokenizer_config.json + generation_config.json, as tpu-mlir copies a
    model's config folder beside its bmodel."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_tokens(THINK)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": template}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return directory


@dataclass(frozen=True)
class Variant:
    """One emulated LLM-TPU bmodel: quantization (int8 -> F16, int4 -> BF16 everywhere) and how
    its head gives the next token."""

    quant: str
    lm_head_topk: bool
    greedy_head: bool = False
    sample_head: bool = False
    history_kv: bool = False  # block_kv_i, dynamic (--use_history_kv)

    @property
    def name(self) -> str:
        head = "topk" if self.lm_head_topk else ("greedy_head" if self.greedy_head else "logits")
        return f"{self.quant}-{head}" + "-sample_head" * self.sample_head + "-history" * self.history_kv

    @property
    def half(self) -> str:
        return "FLOAT16" if self.quant == "int8" else "BFLOAT16"


# (sail version, variant): each API generation meets each head and each half type
VARIANTS = [
    ("3.8.0", Variant("int8", lm_head_topk=True)),
    ("3.8.0", Variant("int4", lm_head_topk=False, greedy_head=True)),
    ("3.9.4", Variant("int8", lm_head_topk=False)),
    ("3.9.4", Variant("int4", lm_head_topk=True, history_kv=True)),
    ("3.9.4", Variant("int8", lm_head_topk=False, greedy_head=True, sample_head=True)),
    ("3.9.4", Variant("int4", lm_head_topk=True)),
]
VARIANT_IDS = [f"sail{v}-{x.name}" for v, x in VARIANTS]


def write_qwen_bmodel(path: Path, variant: Variant, vocab: int, *heads: str, **extra: object) -> Path:
    return sail.write_bmodel(
        path,
        arch="qwen2",
        layers=2,
        hidden=32,
        heads=4,
        kv_heads=2,
        intermediate=64,
        vocab=vocab,
        quant=variant.quant,
        lm_head_topk=variant.lm_head_topk,
        extra_heads=[*(["greedy_head"] if variant.greedy_head else []), *heads]
        + (["sample_head"] if variant.sample_head else []),
        rope_base=1000000.0,
        **{"max_len": QWEN_LEN, "history_kv": variant.history_kv, **extra},
    )


class QwenReference(Reference):
    """The tiny Qwen2-style model over the whole sequence for every token: no cache, no padding,
    no mask value. It rounds where the bmodel hands data across graphs: hidden states and K/V to
    the half type (F16 for int8, BF16 for int4), logits to F32."""

    def __init__(self, bmodel: Path) -> None:
        self.spec = sail.read_bmodel(bmodel)
        self.w = sail.model_weights(self.spec)
        self.half = round_f16 if self.spec.quant == "int8" else round_bf16

    def next_token(self, tokens: Sequence[int]) -> int:
        return int(np.argmax(self.logits(tokens)))

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """lm_head's F32 logits after `tokens`."""
        s = self.spec
        h = self.half(self.w.embed[np.asarray(tokens)].astype(np.float64))
        inv_freq = 1.0 / s.rope_base ** (np.arange(0, s.head_dim, 2) / s.head_dim)
        angles = np.outer(np.arange(len(tokens)), inv_freq)
        cos, sin = np.cos(angles), np.sin(angles)
        for layer in self.w.layers:
            h = self.half(self._layer(layer, h, cos, sin))
        x = h[-1] / math.sqrt(float(np.mean(h[-1] ** 2)) + s.eps) * self.w.norm
        return round_f32(self.w.lm_head @ x)

    def _layer(self, w: dict[str, np.ndarray], h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        s, n, hd = self.spec, h.shape[0], self.spec.head_dim
        x = self._norm(h, w["ln1"])
        q, k, v = x @ w["wq"].T + w["bq"], x @ w["wk"].T + w["bk"], x @ w["wv"].T + w["bv"]
        causal = np.triu(np.full((n, n), -np.inf), 1)
        per_kv = s.heads // s.kv_heads
        heads = []
        for head in range(s.heads):
            kv = head // per_kv  # grouped-query attention: q heads share a kv head
            qh = self._rotate(q[:, head * hd : (head + 1) * hd], cos, sin)
            kh = self.half(self._rotate(k[:, kv * hd : (kv + 1) * hd], cos, sin))
            vh = self.half(v[:, kv * hd : (kv + 1) * hd])
            scores = qh @ kh.T / math.sqrt(hd) + causal
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append((p / p.sum(axis=1, keepdims=True)) @ vh)
        h = h + np.concatenate(heads, axis=1) @ w["wo"].T
        y = self._norm(h, w["ln2"])
        gate, up = y @ w["gate"].T, y @ w["up"].T
        return h + (gate * (1 / (1 + np.exp(-gate))) * up) @ w["down"].T


def qwen_mode(site: Path, version: str) -> Mode:
    return Mode("sophon" if version.startswith("3.9") else "sophon_arm", version, "-", site)
