"""Where the time goes for a long shared prompt (issue 25): `python3 bench/prefill.py --json`.

1. Prefill speed by llama.cpp micro-batch (`n_ubatch`): the room's 600-word handout rendered as a
   system prompt (~720 tokens) prefilled in one `llama_decode` per 512 tokens, as llama-server does,
   with micro-batches of 63 rows (edgechat's UBATCH: one flash-attention kernel for every row) and
   larger ones, and through the engine itself (63 rows, 256 prompt tokens a step); best of
   `--rounds`, interleaved.
2. Giving a second sequence a copy of that prefix, on contexts built like the engine's (a KV buffer
   per sequence): `llama_memory_seq_cp` between the two sequences (llama.cpp copies the whole
   buffer at the next decode, so it is timed with that decode, minus the decode alone), the
   engine's save + restore of the source's cache, and a restore from a record already in host
   RAM; against prefilling it again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgechat.engines.llamacpp import LlamaCppEngine, LlamaCppModel  # noqa: E402, I001 — first: it sets OMP_WAIT_POLICY

import llama_cpp as lc  # noqa: E402

from edgechat.config_values import default_model_path  # noqa: E402
from edgechat.templates import template_for_gguf, ChatTokenizer  # noqa: E402
from edgechat.tokenizers.gguf import GgufTokenizer  # noqa: E402
from edgechat.types import Message, SamplingParams  # noqa: E402
from harness.room import handout  # noqa: E402

CONTEXT = 2048
BATCH = 512  # llama-server's default --batch-size


def context(engine: LlamaCppEngine, ubatch: int, sequences: int = 2) -> object:
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_seq_max = CONTEXT * sequences, sequences
    params.n_batch, params.n_ubatch = BATCH, ubatch
    params.n_threads = params.n_threads_batch = engine.threads
    params.kv_unified, params.no_perf = False, True
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    return lc.llama_init_from_model(engine.model, params)


def decode(ctx: object, batch: object, seq: int, ids: list[int], start: int = 0) -> None:
    for begin in range(0, len(ids), BATCH):
        chunk = ids[begin : begin + BATCH]
        for i, token in enumerate(chunk):
            pos = start + begin + i
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1  # type: ignore[attr-defined]
            batch.seq_id[i][0], batch.logits[i] = seq, begin + i == len(ids) - 1  # type: ignore[attr-defined]
        batch.n_tokens = len(chunk)  # type: ignore[attr-defined]
        assert lc.llama_decode(ctx, batch) == 0


def prefill_rates(
    engines: dict[int, LlamaCppEngine], ids: list[int], ubatches: list[int], rounds: int
) -> dict[str, float]:
    """Prompt tokens/s per micro-batch size, rounds interleaved (the box drifts), best kept:
    raw contexts ("63", "512": one decode per 512 tokens) and the engine's own prefill
    ("engine_63", "engine_256": 256 prompt tokens a step, as in a room; --ubatch)."""
    engine = engines[min(engines)]
    batch = lc.llama_batch_init(BATCH, 0, 1)
    contexts = {ubatch: context(engine, ubatch) for ubatch in ubatches}
    best: dict[int | str, float] = dict.fromkeys(ubatches, 0.0)
    try:
        for _ in range(rounds):
            for ubatch, served in engines.items():
                seq = served.open_sequence()
                served.start(seq, SamplingParams(temperature=0.0), 0)
                began = time.perf_counter()
                served.prefill(seq, ids)
                rate = len(ids) / (time.perf_counter() - began)
                best[f"engine_{ubatch}"] = max(best.get(f"engine_{ubatch}", 0.0), rate)
                served.release(seq)
            for ubatch, ctx in contexts.items():
                lc.llama_memory_seq_rm(lc.llama_get_memory(ctx), -1, -1, -1)
                began = time.perf_counter()
                decode(ctx, batch, 0, ids)
                best[ubatch] = max(best[ubatch], len(ids) / (time.perf_counter() - began))
    finally:
        for ctx in contexts.values():
            lc.llama_free(ctx)
        lc.llama_batch_free(batch)
    return {str(ubatch): round(rate, 1) for ubatch, rate in best.items()}


def copy_costs(engine: LlamaCppEngine, ids: list[int], rounds: int) -> dict:
    """Milliseconds to give sequence 1 the prefix sequence 0 holds, best of `rounds` each."""
    seq = engine.open_sequence()
    engine.start(seq, SamplingParams(temperature=0.0), 0)
    began = time.perf_counter()
    engine.prefill(seq, ids)
    prefill_ms = (time.perf_counter() - began) * 1000
    other = engine.open_sequence()
    record = engine.save(seq)
    times: dict[str, list[float]] = {"save_restore": [], "restore_record": [], "seq_cp_with_decode": [], "decode": []}
    memory, one = engine.memory, [ids[-1]]
    s0, s1 = engine._streams.stream(seq), engine._streams.stream(other)
    for _ in range(rounds):
        began = time.perf_counter()
        assert engine.copy(other, seq)
        times["save_restore"].append(time.perf_counter() - began)
        engine.start(other, SamplingParams(temperature=0.0), len(ids) - 1)
        began = time.perf_counter()
        engine.step([(other, one, True)])
        times["decode"].append(time.perf_counter() - began)
        began = time.perf_counter()
        assert engine.restore(other, record, len(ids))
        times["restore_record"].append(time.perf_counter() - began)
        lc.llama_memory_seq_rm(memory, s1, -1, -1)
        engine._pos[other] = len(ids) - 1
        began = time.perf_counter()
        lc.llama_memory_seq_cp(memory, s0, s1, -1, -1)  # pending until the next decode copies the buffer
        lc.llama_memory_seq_rm(memory, s1, len(ids) - 1, -1)
        engine.step([(other, one, True)])
        times["seq_cp_with_decode"].append(time.perf_counter() - began)
    best = {k: min(v) * 1000 for k, v in times.items()}
    return {
        "prefix_tokens": len(ids),
        "state_mib": round(len(record) / 2**20, 2),
        "prefill_ms": round(prefill_ms, 1),
        "save_restore_ms": round(best["save_restore"], 2),
        "restore_record_ms": round(best["restore_record"], 2),
        "seq_cp_ms": round(best["seq_cp_with_decode"] - best["decode"], 2),
        "one_token_decode_ms": round(best["decode"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--words", type=int, default=600, help="handout length")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each measure; best kept")
    parser.add_argument("--ubatches", default="63,128,256,512", help="micro-batch sizes to compare")
    parser.add_argument("--engine-ubatches", default="63,256", help="the engine's --ubatch values to compare")
    args = parser.parse_args()
    engines = {
        int(u): LlamaCppEngine(
            LlamaCppModel(default_model_path()), context_length=CONTEXT, max_sequences=2, ubatch=int(u)
        )
        for u in args.engine_ubatches.split(",")
    }
    engine = engines[min(engines)]
    try:
        chat = ChatTokenizer(
            GgufTokenizer(engine.model), template_for_gguf(engine.metadata, GgufTokenizer(engine.model))
        )
        ids = chat.render([Message(role="system", content=handout(args.words)), Message(role="user", content="Hi")])
        rates = prefill_rates(engines, ids, [int(u) for u in args.ubatches.split(",")], args.rounds)
        copies = copy_costs(engine, ids, args.rounds)
    finally:
        for served in engines.values():
            served.close()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "prompt_tokens": len(ids),
        "prefill_tps_by_ubatch": rates,
        "copy": copies,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
