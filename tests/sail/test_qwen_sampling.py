"""Sampler heads on the sail emulator: a bmodel with `sample_head` (tpu-mlir's
`gen_sample_head_mlir`) applies a request's temperature, top-p, top-k and repetition penalty on
the TPU and the draw among its candidates is made with the request's seed; every token equals a
numpy reference of the same sampler. Without one, sampling is fixed and the runtime says so."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgechat.runtime import Runtime
from edgechat.types import Message, SamplingParams
from tests.conftest import answer_ids
from tests.sail.harness import GREEDY_24, chat, open_runtime, sail
from tests.sail.qwen_harness import QwenReference, Variant, write_qwen_bmodel, write_token_config

QUESTIONS = ["What is a TPU?", "And a KV cache?"]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, Path]]:
    site = tmp_path_factory.mktemp("site")
    sail.install_as(site, "3.9.4", "sophon")
    sys.path.insert(0, str(site))
    from edgechat.tokenizers.hf import HfTokenizer

    cfg = write_token_config(tmp_path_factory.mktemp("qwen") / "config")
    variant = Variant("int4", lm_head_topk=False, greedy_head=True)
    bmodel = write_qwen_bmodel(
        tmp_path_factory.mktemp("m") / "qwen2-sample.bmodel", variant, HfTokenizer(cfg).vocab_size, "sample_head"
    )
    rt = open_runtime(bmodel, cfg)
    try:
        yield rt, bmodel
    finally:
        rt.close()
        sys.path.remove(str(site))


def reference_sample(ref: QwenReference, prompt: list[int], s: SamplingParams, stop: frozenset[int]) -> list[int]:
    """The sampler written apart from the emulator: penalty on every id the sequence holds, the
    50 best, temperature, top-k, top-p keeping at least 5, then a draw with the request's seed."""
    rng, ids, out = np.random.default_rng(s.seed), list(prompt), []
    for _ in range(s.max_new_tokens):
        logits = ref.logits(ids).astype(np.float64)
        for i in set(ids):
            logits[i] = logits[i] * s.repetition_penalty if logits[i] < 0 else logits[i] / s.repetition_penalty
        best = np.argsort(-logits, kind="stable")[:50]
        scaled = logits[best] / s.temperature
        if s.top_k:
            scaled[s.top_k :] = -np.inf
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        keep = np.cumsum(p) < s.top_p
        keep[:5] = True
        q = np.exp(np.where(keep, scaled, -1000.0) - scaled.max())
        q = q.astype(np.float32).astype(np.float64)  # the head's F32 output
        token = int(best[rng.choice(q.size, p=q / q.sum())])
        if token in stop:
            break
        out.append(token)
        ids.append(token)
    return out


def test_sampled_answers_equal_the_reference_sampler(sampled: tuple[Runtime, Path]) -> None:
    rt, bmodel = sampled
    assert rt.info["sampling_fixed"] is False and "sample_head on the TPU" in rt.info["sampling"]
    net = rt.backend.scheduler.engine._net  # type: ignore[attr-defined]
    ref, stop = QwenReference(bmodel), rt.tokenizer.stop_ids
    settings = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.3, max_new_tokens=16, seed=7)
    before = net.calls.copy()
    turns = chat(rt, QUESTIONS, settings)
    drawn = net.calls - before
    for t in turns:
        assert t.answer == reference_sample(ref, t.prompt, settings, stop), t.prompt
    assert drawn["sample_head"] == sum(len(t.answer) + 1 for t in turns if len(t.answer) < 16) + sum(
        16 for t in turns if len(t.answer) == 16
    )
    assert drawn["greedy_head"] == 0
    assert [t.answer for t in chat(rt, QUESTIONS, settings)] == [t.answer for t in turns]  # a seed repeats


def test_temperature_zero_and_top_k_one_are_greedy(sampled: tuple[Runtime, Path]) -> None:
    rt, bmodel = sampled
    ref, stop = QwenReference(bmodel), rt.tokenizer.stop_ids
    greedy = chat(rt, QUESTIONS)
    assert all(t.answer == ref.generate(t.prompt, GREEDY_24.max_new_tokens, stop) for t in greedy)
    one = chat(rt, QUESTIONS, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=GREEDY_24.max_new_tokens))
    assert [t.answer for t in one] == [t.answer for t in greedy]


def test_without_a_sample_head_sampling_is_fixed(tmp_path: Path) -> None:
    cfg = write_token_config(tmp_path / "config")
    from edgechat.tokenizers.hf import HfTokenizer

    bmodel = write_qwen_bmodel(tmp_path / "q.bmodel", Variant("int8", lm_head_topk=True), HfTokenizer(cfg).vocab_size)
    rt = open_runtime(bmodel, cfg)
    try:
        assert rt.info["sampling_fixed"] is True and "not applied" in rt.info["sampling"]
        hot = SamplingParams(temperature=1.5, top_k=5, max_new_tokens=GREEDY_24.max_new_tokens)
        assert [t.answer for t in chat(rt, QUESTIONS, hot)] == [t.answer for t in chat(rt, QUESTIONS)]
    finally:
        rt.close()


def test_sampled_answers_taking_turns_on_the_tpu_go_on_as_they_would_have(tmp_path: Path) -> None:
    """Four people on two KV slots of a bmodel with history K/V and a sample_head, slices of 4
    tokens: each answer's Draw (its seeded generator, the penalty's window) is parked with its K/V
    and given back, so every sampled answer equals the one the same request gets alone."""
    site = tmp_path / "site"
    sail.install_as(site, "3.9.4", "sophon")
    sys.path.insert(0, str(site))
    try:
        from edgechat.tokenizers.hf import HfTokenizer

        cfg = write_token_config(tmp_path / "config")
        variant = Variant("int4", lm_head_topk=False, greedy_head=True, history_kv=True)
        bmodel = write_qwen_bmodel(tmp_path / "q.bmodel", variant, HfTokenizer(cfg).vocab_size, "sample_head")
        rt = open_runtime(bmodel, cfg, "--max-running", "2", "--time-slice", "4", "--max-prompt-share", "0.9")
        try:
            sched, chat_template = rt.backend.scheduler, rt.tokenizer
            asks = [f"Person {i}: what is a TPU?" for i in range(4)]
            prompts = [chat_template.render([Message(role="user", content=q)]) for q in asks]
            settings = [
                SamplingParams(temperature=0.9, top_k=20, repetition_penalty=1.3, max_new_tokens=16, seed=i)
                for i in range(4)
            ]
            solo = [
                answer_ids(sched.submit(p, s, chat_template.stop_ids)) for p, s in zip(prompts, settings, strict=True)
            ]
            assert all(len(s) > 8 for s in solo), [len(s) for s in solo]  # long enough to be sliced
            handles = [sched.submit(p, s, chat_template.stop_ids) for p, s in zip(prompts, settings, strict=True)]
            assert [answer_ids(h) for h in handles] == solo
            stats = sched.stats().scheduler
            assert stats is not None and stats.slices >= 2 and stats.errors == 0
        finally:
            rt.close()
    finally:
        sys.path.remove(str(site))
