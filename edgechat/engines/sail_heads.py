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
from typing import Any

import numpy as np

from edgechat.engines.sail_api import FLOATS, INTEGERS, Io, from_device

Process = Callable[[str, Sequence[tuple[Io, Any]], Sequence[tuple[Io, Any]]], None]


class Heads:
    """lm_head (+ greedy_head): the io to allocate, the checks, and the next token."""

    def __init__(self, io: dict[str, tuple[list[Io], list[Io]]]) -> None:
        lm_ins, self.lm_outs = io["lm_head"]  # a multi-TPU bmodel has more; check_protocol refuses it
        self.lm_in, self.lm_out = lm_ins[0], self.lm_outs[0]
        self.greedy = io.get("greedy_head")
        self.gives_token = self.lm_out.shape[-1] == 1

    def plan(self) -> list[Io]:
        """Tensors the heads need beyond lm_head's own input and output (the engine's scratch)."""
        if self.gives_token or self.greedy is None:
            return []
        return [self.greedy[1][0]]  # greedy_head reads lm_head's output tensor as it is

    def problem(self) -> str | None:
        out = self.lm_out
        if len(self.lm_outs) != 1 or len(out.shape) != 2 or out.shape[0] != 1:
            return f"lm_head must give one [1,1] id or [1,V] logits, gives {[o.shape for o in self.lm_outs]}"
        if self.gives_token and out.dtype_name not in INTEGERS:
            return f"lm_head's token must be an integer, found {out.dtype_name}"
        if not self.gives_token and out.dtype_name not in FLOATS:
            return f"lm_head's logits must be floats, found {out.dtype_name}"
        if self.greedy is not None and not self.gives_token:
            (g_in, *rest), g_out = self.greedy
            if rest or g_in.shape != out.shape or g_in.dtype_name != out.dtype_name or g_out[0].shape[-1] != 1:
                return f"greedy_head must take lm_head's logits {out.shape} and give one id"
        return None

    def sampling(self) -> str:
        if self.gives_token:
            return "greedy: lm_head returns the argmax on the TPU; temperature/top-p/top-k are not applied"
        if self.greedy is not None:
            return "greedy: greedy_head picks the argmax on the TPU; temperature/top-p/top-k are not applied"
        return "greedy: the argmax of lm_head's logits; temperature/top-p/top-k are not applied"

    def token(self, process: Process) -> int:
        """Run lm_head on its input tensor (filled by the caller) and return the next id."""
        lm_i, lm_o = self.lm_in, self.lm_out
        process("lm_head", [(lm_i, lm_i.tensor)], [(lm_o, lm_o.tensor)])
        if self.gives_token:
            return int(lm_o.tensor.asnumpy().reshape(-1)[0])
        if self.greedy is not None:
            (g_in,), (g_out,) = self.greedy
            process("greedy_head", [(g_in, lm_o.tensor)], [(g_out, g_out.tensor)])
            return int(g_out.tensor.asnumpy().reshape(-1)[0])
        return int(np.argmax(from_device(lm_o.tensor.asnumpy(), lm_o.dtype).reshape(-1)))
