"""Per-sequence sampling over one llama.cpp context's logits: what each running sequence's next
token is, for the llama.cpp engine (edgechat.engines.llamacpp), which owns the context.

A greedy sequence's next token is the argmax of its logits row (numpy, no sampler call); the
others use llama.cpp's sampler chain, one per sequence (penalties, top-k, top-p, temperature,
seeded dist). A request that constrains its output (structured output, batched with everyone
else) also gets llama.cpp's grammar sampler, used as llama.cpp's own common sampler does: the
chain picks, the grammar checks that one token, and only when it rejects it is the grammar applied
to the whole vocabulary and the chain run again. Log-probabilities come from the raw logits row.
Imported by the engine module after it set OMP_WAIT_POLICY (see there), never on its own.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from typing import Any

import llama_cpp as lc
import numpy as np

from edgechat.engines.base import Feed
from edgechat.types import SamplingParams, TokenLogprobs

PENALTY_LAST_N = 64
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class CarriedSampling:
    """One sequence's sampling state taken out of `Samplers` while its answer waits for its next
    time slice: the chain (its random stream and penalties' history), the grammar's parse state,
    the last token the chain saw, the logprobs wish. Its llama.cpp samplers are freed when it is
    dropped without being resumed (an answer cancelled while it waited)."""

    def __init__(self, chain: Any, penalties: Any, last: int | None, grammar: Any, logprobs: int | None) -> None:
        self.chain, self.penalties, self.last, self.grammar, self.logprobs = chain, penalties, last, grammar, logprobs
        self._free = weakref.finalize(self, _free_samplers, chain, grammar)

    def hand_over(self) -> None:
        """`Samplers` owns the samplers again: nothing to free here any more."""
        self._free.detach()


def _free_samplers(*samplers: Any) -> None:
    for sampler in samplers:
        if sampler is not None:
            lc.llama_sampler_free(sampler)


class Samplers:
    """The sampling state of every sequence of one context: `start` a request's, `sample` a
    step's next tokens, `release` a sequence's. Called from the engine's thread only."""

    def __init__(self, ctx: Any, vocab: Any, n_vocab: int) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.n_vocab = n_vocab
        self._samplers: dict[int, Any] = {}  # seq -> llama.cpp chain; absent = plain greedy (argmax)
        self._penalized: dict[int, Any] = {}  # seq -> its chain's penalties sampler, which sees every token
        self._last: dict[int, int] = {}  # seq -> the token its chain sampled last
        self._grammars: dict[int, Any] = {}  # seq -> its grammar sampler (structured output)
        self._ids = np.arange(n_vocab, dtype=np.int32)  # candidate ids, for grammar sequences
        self._want_logprobs: dict[int, int] = {}  # seq -> alternatives to report per token
        self._logprobs: dict[int, TokenLogprobs] = {}  # seq -> its last sampled token's

    def start(self, seq: int, sampling: SamplingParams) -> None:
        """Fresh sampling state for a request on `seq` (the previous request's is freed)."""
        self.release(seq)
        if not sampling.stateless:
            self._samplers[seq], penalties = _sampler_chain(sampling)
            if penalties is not None:
                self._penalized[seq] = penalties
        if sampling.grammar is not None:
            self._grammars[seq] = _grammar_sampler(self.vocab, sampling.grammar)
        if sampling.logprobs is not None:
            self._want_logprobs[seq] = sampling.logprobs

    def take(self, seq: int) -> CarriedSampling:
        """`seq`'s state, taken out (its sequence is about to be released) for `resume`."""
        carried = CarriedSampling(
            self._samplers.pop(seq, None), self._penalized.pop(seq, None), self._last.pop(seq, None),
            self._grammars.pop(seq, None), self._want_logprobs.pop(seq, None),
        )  # fmt: skip
        self._logprobs.pop(seq, None)
        return carried

    def resume(self, seq: int, carried: CarriedSampling) -> None:
        """A request going on on `seq` with the state `take` took out of its earlier sequence."""
        self.release(seq)
        carried.hand_over()
        for table, value in (
            (self._samplers, carried.chain), (self._penalized, carried.penalties), (self._last, carried.last),
            (self._grammars, carried.grammar), (self._want_logprobs, carried.logprobs),
        ):  # fmt: skip
            if value is not None:
                table[seq] = value

    def token_logprobs(self, seq: int) -> TokenLogprobs | None:
        return self._logprobs.pop(seq, None)

    def release(self, seq: int) -> None:
        for table in (self._samplers, self._grammars):
            old = table.pop(seq, None)
            if old is not None:
                lc.llama_sampler_free(old)
        for other in (self._penalized, self._last, self._want_logprobs, self._logprobs):
            other.pop(seq, None)

    def close(self) -> None:
        for seq in {*self._samplers, *self._grammars}:
            self.release(seq)

    def sample(self, feeds: Sequence[Feed], rows: list[int], n_out: int) -> list[int | None]:
        """Greedy sequences take the argmax of their logits row (no sampler call per token);
        the others run their llama.cpp chain on the row."""
        logits = np.ctypeslib.as_array(lc.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab)) if n_out else None
        out: list[int | None] = []
        j = 0
        for (seq, fed, _), row in zip(feeds, rows, strict=True):
            chain = self._samplers.get(seq)
            penalties = self._penalized.get(seq)
            if penalties is not None:  # the prompt too (not the grammar: it reads the answer only)
                skip = 1 if len(fed) == 1 and self._last.get(seq) == fed[0] else 0  # a decode: seen
                for token in fed[skip:]:
                    lc.llama_sampler_accept(penalties, token)
            if row < 0:
                out.append(None)
                continue
            if chain is None:
                token = int(logits[j].argmax())  # type: ignore[index]
            elif seq in self._grammars:
                token = self._sample_constrained(chain, self._grammars[seq], logits[j])  # type: ignore[index]
                self._last[seq] = token
            else:
                token = int(lc.llama_sampler_sample(chain, self.ctx, row))
                self._last[seq] = token
            if seq in self._want_logprobs:
                self._logprobs[seq] = _logprobs_of(logits[j], token, self._want_logprobs[seq])  # type: ignore[index]
            j += 1
            out.append(token)
        return out

    def _sample_constrained(self, chain: Any, grammar: Any, row: np.ndarray) -> int:
        """llama.cpp's common sampler with a grammar: the chain picks from the raw logits; if the
        grammar rejects that token, the grammar masks the whole vocabulary and the chain picks
        again. Both then accept the token (the grammar advances, the penalties remember it)."""
        token = self._apply(chain, None, row)
        one = lc.llama_token_data(token, 1.0, 0.0)
        single = lc.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        lc.llama_sampler_apply(grammar, ctypes.byref(single))
        if not np.isfinite(one.logit):
            token = self._apply(chain, grammar, row)
        lc.llama_sampler_accept(grammar, token)
        lc.llama_sampler_accept(chain, token)
        return token

    def _apply(self, chain: Any, grammar: Any, row: np.ndarray) -> int:
        """The token `chain` selects over the whole vocabulary (masked by `grammar` first, if given)."""
        cand = np.empty(self.n_vocab, dtype=TOKEN_DATA)
        cand["id"], cand["logit"], cand["p"] = self._ids, row, 0.0
        array = lc.llama_token_data_array(
            cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), len(cand), -1, False
        )
        if grammar is not None:
            lc.llama_sampler_apply(grammar, ctypes.byref(array))
        lc.llama_sampler_apply(chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("llama.cpp's sampler selected no token")
        return int(array.data[array.selected].id)


def _logprobs_of(row: np.ndarray, token: int, top: int) -> TokenLogprobs:
    """log-softmax of the raw logits: the token's log-probability and the `top` most likely."""
    row = row.astype(np.float64)
    shifted = row - row.max()
    logz = np.log(np.exp(shifted).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-shifted, top - 1)[:top]
        ids = ids[np.argsort(-shifted[ids], kind="stable")]
        best = [(int(i), float(shifted[i] - logz)) for i in ids]
    return TokenLogprobs(float(shifted[token] - logz), tuple(best))


def _grammar_sampler(vocab: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for GBNF text (root rule `root`)."""
    sampler = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("llama.cpp could not parse the output grammar")
    return sampler


def _sampler_chain(s: SamplingParams) -> tuple[Any, Any]:
    """llama.cpp's own chain: penalties, then greedy, or top-k → top-p → temperature → seeded
    dist; and the chain's penalties sampler, if any."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    penalties = None
    if s.penalized:
        # llama.h takes (last_n, repeat, freq, present); llama-cpp-python 0.3.36 still declares a
        # leading n_vocab int, so last_n goes first and the stale int slot is passed 0 (ignored).
        penalties = lc.llama_sampler_init_penalties(
            PENALTY_LAST_N, 0, s.repetition_penalty, s.frequency_penalty, s.presence_penalty
        )
        lc.llama_sampler_chain_add(chain, penalties)
    if s.greedy:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain, penalties
    if s.top_k > 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
    return chain, penalties
