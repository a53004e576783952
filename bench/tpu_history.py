"""What history K/V saves on the TPU: prefill tokens per turn of a 5-turn chat, with and without
`block_kv_i`, on the sophon.sail emulator (tests/sail_emulator; no TPU needed).

    python3 bench/tpu_history.py --json

Three emulated LLM-TPU bmodels of the same tiny Qwen2-style model (context 512, F16): static
(as Sophgo's default export), dynamic (`llm_convert.py --dynamic`) and with history K/V
(`--use_history_kv`: dynamic `block_kv_i`), answer the same 5 questions greedily as one session
through the real client + scheduler + sail engine. Per turn: the prompt's tokens, the
tokens the room kept from the previous turn, and the rows the prefill graphs computed (counted by
the emulator: a static `block_i` computes all 512 rows whatever the prompt, a dynamic one only
the tokens it is fed). Counts, not times: the emulator's speed says nothing about a BM1684X's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgechat.clients import client_for  # noqa: E402
from edgechat.types import Message  # noqa: E402
from tests.sail.harness import GREEDY_24, open_runtime, recording_backend  # noqa: E402 — puts the emulator on the path
from tests.sail.qwen_harness import Variant, write_qwen_bmodel, write_token_config  # noqa: E402

QUESTIONS = [
    "What is a TPU?",
    "And a KV cache?",
    "Why does an edge box serve a whole room from one model?",
    "你好，请介绍一下你自己。",
    "Summarize all of it in one line.",
]
CONTEXT = 512


def run(bmodel: Path, config: Path) -> list[dict[str, Any]]:
    rt = open_runtime(bmodel, config, "--max-prompt-share", "0.9")
    try:
        return _one_session(rt, rt.backend.scheduler.engine._net)  # type: ignore[attr-defined]
    finally:
        rt.close()


def _one_session(rt: Any, net: Any) -> list[dict[str, Any]]:
    """The 5 questions as ONE session, measuring each turn's prefill as it happens."""
    backend, recorder = recording_backend(rt)
    client = client_for(replace(rt, backend=backend), sampling=GREEDY_24)
    history: list[Message] = []
    out = []
    for question in QUESTIONS:
        before = net.fed.copy()
        answer = "".join(client.chat_stream(question, history))
        fed = net.fed - before
        stats = client.last_stats
        if stats.error:
            raise SystemExit(f"turn failed: {stats.error}")
        out.append(
            {
                "prompt_tokens": stats.prompt_tokens,
                "reused_tokens": stats.reused_tokens,
                "prefill_tokens_fed": stats.prompt_tokens - stats.reused_tokens,
                "prefill_rows_computed": fed["block"] + fed["block_kv"],
                "answer_ids": list(recorder.tokens),
            }
        )
        history += [Message(role="user", content=question), Message(role="assistant", content=answer)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    os.environ.setdefault("SAIL_EMULATOR_API", "3.9")  # dynamic graphs need sail >= 3.9
    with tempfile.TemporaryDirectory() as tmp:
        config = write_token_config(Path(tmp) / "config")
        from edgechat.tokenizers.hf import HfTokenizer

        vocab = HfTokenizer(config).vocab_size
        results = {}
        kinds = {"static_without_history_kv": {}, "dynamic_without_history_kv": {"dynamic": True},
                 "with_history_kv": {"history_kv": True}}  # fmt: skip
        for name, flags in kinds.items():
            path = Path(tmp) / f"qwen2-{name}.bmodel"
            write_qwen_bmodel(path, Variant("int8", lm_head_topk=True), vocab, max_len=CONTEXT, **flags)
            results[name] = run(path, config)
    same = [len({str(t["answer_ids"]) for t in turns}) == 1 for turns in zip(*results.values(), strict=True)]
    for turns in results.values():
        for turn in turns:
            turn.pop("answer_ids")
    report = {
        "bench": "tpu_history",
        "where": "sophon.sail emulator (tests/sail_emulator), tiny Qwen2-style model, context 512, greedy",
        "sail_emulator_api": os.environ["SAIL_EMULATOR_API"],
        "turns": len(QUESTIONS),
        "same_answers_per_turn": same,
        **results,
        "totals": {
            name: {
                "prefill_tokens_fed": sum(t["prefill_tokens_fed"] for t in turns),
                "prefill_rows_computed": sum(t["prefill_rows_computed"] for t in turns),
            }
            for name, turns in results.items()
        },
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
