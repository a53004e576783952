"""What follows the last hidden state of a sail bmodel: `lm_head` and, where the bmodel has one,
`greedy_head`; and the masked value its attention masks carry.

Two generations of Sophgo bmodels (read from their public sources, not copied):
- sophon-demo's Baichuan2 (`sample/Baichuan2`): `lm_head` [1,H] -> the next id [1,1] INT32
  (argmax inside the graph); hidden states and the mask in F32, masked = -1000.
- sophgo/LLM-TPU's Qwen2.5/Qwen3/DeepSeek-R1-Distill/Llama (tpu-mlir `python/llm/LlmConverter.py`,
  LLM-TPU `models/Qwen3/python_demo/chat.cpp`): `lm_head` gives the top-1 id when its output
  dim 1 is 1, else logits [1,V] that `greedy_head` (logits -> id) turns into a token; hidden
  states and masks are F16 or BF16, masked positions hold 0xF0E2 (F16, -10000) or 0xC61C
  (BF16, -9984), the patterns Sophgo's pipelines write.
Which one a bmodel is comes from these shapes and dtypes, never from its file name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgechat.engines.sail_api import FLOATS, INTEGERS, Io, from_device, to_device
from edgechat.types import SamplingParams

Process = Callable[[str, Sequence[tuple[Io, Any]], Sequence[tuple[Io, Any]]], None]


@dataclass
class Draw:
    """A sequence's sampling state: the request's settings, its own generator (seeded, so a seed
    repeats an answer) and the ids the sequence holds (the repetition penalty's window; after a
    parked cache is restored it starts at that turn's new tokens)."""

    sampling: SamplingParams | None = None
    rng: np.random.Generator | None = None
    ids: list[int] = field(default_factory=list)

    def start(self, sampling: SamplingParams, keep: int) -> None:
        self.sampling, self.rng = sampling, np.random.default_rng(sampling.seed)
        del self.ids[keep:]


class Heads:
    """lm_head (+ greedy_head / sample_head): the io to allocate, the checks, the next token."""

    def __init__(self, io: dict[str, tuple[list[Io], list[Io]]]) -> None:
        lm_ins, self.lm_outs = io["lm_head"]  # a multi-TPU bmodel has more; check_protocol refuses it
        self.lm_in, self.lm_out = lm_ins[0], self.lm_outs[0]
        self.greedy = io.get("greedy_head")
        self.gives_token = self.lm_out.shape[-1] == 1
        self.sample = None if self.gives_token else io.get("sample_head")

    def plan(self) -> list[Io]:
        """Tensors the heads need beyond lm_head's own input and output (the engine's scratch);
        greedy_head and sample_head read lm_head's output tensor as it is."""
        if self.gives_token:
            return []
        greedy = [self.greedy[1][0]] if self.greedy is not None else []
        return greedy + ([*self.sample[0][1:], *self.sample[1]] if self.sample is not None else [])

    def problem(self) -> str | None:
        out, batch = self.lm_out, self.lm_in.shape[0]
        if len(self.lm_outs) != 1 or len(out.shape) != 2 or out.shape[0] != batch:
            return f"lm_head must give one [N,1] id or [N,V] logits, gives {[o.shape for o in self.lm_outs]}"
        if batch > 1 and (self.greedy is not None or self.sample is not None):
            return f"a batch-{batch} bmodel with greedy_head/sample_head is not supported (lm_head ids or logits are)"
        if self.gives_token and out.dtype_name not in INTEGERS:
            return f"lm_head's token must be an integer, found {out.dtype_name}"
        if not self.gives_token and out.dtype_name not in FLOATS:
            return f"lm_head's logits must be floats, found {out.dtype_name}"
        if self.greedy is not None and not self.gives_token:
            (g_in, *rest), g_out = self.greedy
            if rest or g_in.shape != out.shape or g_in.dtype_name != out.dtype_name or g_out[0].shape[-1] != 1:
                return f"greedy_head must take lm_head's logits {out.shape} and give one id"
        if self.sample is not None:
            s_in, s_out = self.sample
            if len(s_in) != 6 or len(s_out) != 2 or s_in[0].shape != out.shape or s_in[0].dtype_name != out.dtype_name:
                return (
                    "sample_head must take (logits, input_ids, penalty, temperature, top_k, top_p), give (probs, ids)"
                )
        return None

    def sampling(self) -> str:
        if self.sample is not None:
            k = self.sample[1][0].shape[-1]
            return (
                f"sample_head on the TPU: temperature, top-p, top-k (at most {k}) and the repetition penalty "
                "are applied; temperature 0 is greedy"
            )
        if self.gives_token:
            return "greedy: lm_head returns the argmax on the TPU; temperature/top-p/top-k are not applied"
        if self.greedy is not None:
            return "greedy: greedy_head picks the argmax on the TPU; temperature/top-p/top-k are not applied"
        return "greedy: the argmax of lm_head's logits; temperature/top-p/top-k are not applied"

    @property
    def fixed(self) -> bool:
        """True when a request's temperature, top-p, top-k and penalty cannot be applied."""
        return self.sample is None

    def token(self, process: Process, draw: Draw | None = None) -> int:
        """Run lm_head on its input tensor (filled by the caller) and return the next id."""
        lm_i, lm_o = self.lm_in, self.lm_out
        process("lm_head", [(lm_i, lm_i.tensor)], [(lm_o, lm_o.tensor)])
        if lm_o.shape[0] > 1:  # a batch bmodel: the prefilled sequence is row 0
            return self.rows(1)[0]
        if self.gives_token:
            return int(lm_o.tensor.asnumpy().reshape(-1)[0])
        if self.sample is not None and draw is not None and draw.sampling is not None and draw.sampling.temperature > 0:
            return self._sample(process, draw)
        if self.greedy is not None:
            (g_in,), (g_out,) = self.greedy
            process("greedy_head", [(g_in, lm_o.tensor)], [(g_out, g_out.tensor)])
            return int(g_out.tensor.asnumpy().reshape(-1)[0])
        return int(np.argmax(from_device(lm_o.tensor.asnumpy(), lm_o.dtype).reshape(-1)))

    def rows(self, n: int) -> list[int]:
        """The ids of lm_head's first `n` rows after a batch run (ids, or the argmax of logits)."""
        out = self.lm_out
        values = out.tensor.asnumpy().reshape(out.shape[0], -1)[:n]
        if self.gives_token:
            return [int(v[0]) for v in values]
        return [int(np.argmax(from_device(v, out.dtype))) for v in values]

    def _sample(self, process: Process, draw: Draw) -> int:
        """sample_head narrows the logits to its top-k candidates with their probabilities (as
        sophgo/LLM-TPU's chat.cpp calls it); the draw among them is made here."""
        assert self.sample is not None and draw.sampling is not None and draw.rng is not None
        (logits, ids, penalty, temperature, top_k, top_p), (probs, idx) = self.sample
        s, window = draw.sampling, ids.shape[-1]
        recent = draw.ids[-window:] or [0]
        padded = recent + [recent[-1]] * (window - len(recent))  # a repeated id is penalized once
        values = [(ids, padded), (penalty, [s.repetition_penalty]), (temperature, [s.temperature]),
                  (top_k, [s.top_k or probs.shape[-1]]), (top_p, [s.top_p])]  # fmt: skip
        for io, value in values:
            io.tensor.update_data(to_device(np.array(value).reshape(io.shape), io.dtype))
        ins = [(logits, self.lm_out.tensor), *((io, io.tensor) for io, _ in values)]
        process("sample_head", ins, [(probs, probs.tensor), (idx, idx.tensor)])
        p = from_device(probs.tensor.asnumpy(), probs.dtype).reshape(-1)
        candidates = idx.tensor.asnumpy().reshape(-1)
        return int(candidates[draw.rng.choice(p.size, p=p / p.sum())])
