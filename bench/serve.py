"""Serving benchmark on the embedded default model: `python3 bench/serve.py --json`.

Every figure comes from this one run on this machine, so the ratios compare like with like:
llama-cpp-python alone vs. through client + scheduler, 1/2/4/8 concurrent sessions, KV reuse on a
5-turn chat, memory. Answers run to max_new_tokens (no stop ids) so every session does equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgechat.clients import client_for  # noqa: E402
from edgechat.config import parse_settings  # noqa: E402
from edgechat.config_values import default_model_path  # noqa: E402
from edgechat.runtime import Runtime, load_runtime  # noqa: E402
from edgechat.types import Message, SamplingParams  # noqa: E402
from harness.memory import peak_rss_mib, rss_mib  # noqa: E402

QUESTION = "Write a long story about a dragon and a knight."
TARGETS = {
    "single_vs_raw": 0.9,
    "aggregate8_vs_single": 1.5,
    "fairness_max_over_min": 1.5,
    "turn5_reuse_vs_reprefill": 0.3,
}


def raw_llamacpp_tps(prompt_text: str, tokens: int, threads: int) -> float:
    """llama-cpp-python's own Llama.generate, same model and prompt, greedy."""
    from llama_cpp import Llama

    llm = Llama(str(default_model_path()), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    best = 0.0
    for _ in range(2):
        llm.reset()
        n, first = 0, 0.0
        for _token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            n += 1
            if n == 1:
                first = time.perf_counter()
            if n >= tokens:
                break
        best = max(best, (n - 1) / (time.perf_counter() - first))
    del llm
    return best


def single_client_tps(rt: Runtime, tokens: int) -> float:
    """Through a client + scheduler, as a terminal user gets it (best of two)."""
    best = 0.0
    for _ in range(2):
        client = client_for(rt, sampling=SamplingParams(temperature=0, max_new_tokens=tokens))
        "".join(client.chat_stream(QUESTION, []))
        best = max(best, client.last_stats.decode_tps or 0.0)
    return best


def concurrent(rt: Runtime, sessions: int, tokens: int) -> dict[str, float]:
    stats: list = [None] * sessions
    rss: list[float] = []

    def one(i: int) -> None:
        client = client_for(rt, sampling=SamplingParams(temperature=0, max_new_tokens=tokens))
        for n, _ in enumerate(client.chat_stream(f"{QUESTION} (version {i})", [])):
            if n == tokens // 2 and i == 0:
                rss.append(rss_mib())
        stats[i] = client.last_stats

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tps = [s.decode_tps for s in stats]
    ftl = sorted(s.first_token_s for s in stats)
    return {
        "aggregate_tps": sum(s.completion_tokens for s in stats) / wall,
        "session_tps_min": min(tps),
        "session_tps_max": max(tps),
        "fairness_max_over_min": max(tps) / min(tps),
        "ftl_p50_s": statistics.median(ftl),
        "ftl_p95_s": ftl[min(len(ftl) - 1, round(0.95 * (len(ftl) - 1)))],
        "rss_mib_mid_run": rss[0] if rss else rss_mib(),
    }


def turn5(rt: Runtime, answer_tokens: int) -> dict[str, float]:
    """A 5-turn chat, ~150-token answers: the 5th turn's first-token latency with the session's
    cached prefix reused, and with a full re-prefill of the same prompt."""
    sampling = SamplingParams(temperature=0, max_new_tokens=answer_tokens)
    client = client_for(rt, sampling=sampling)
    history: list[Message] = []
    questions = [f"Tell me part {i} of a story about a lighthouse keeper, in detail." for i in range(1, 6)]
    for q in questions[:4]:
        reply = "".join(client.chat_stream(q, history))
        history += [Message(role="user", content=q), Message(role="assistant", content=reply)]
    client.sampling = SamplingParams(temperature=0, max_new_tokens=2)
    "".join(client.chat_stream(questions[4], history))
    reuse = client.last_stats
    fresh = client_for(rt, sampling=client.sampling)
    "".join(fresh.chat_stream(questions[4], history))
    return {
        "turn5_prompt_tokens": reuse.prompt_tokens,
        "turn5_reused_tokens": reuse.reused_tokens,
        "turn5_ftl_reuse_s": reuse.first_token_s,
        "turn5_ftl_reprefill_s": fresh.last_stats.first_token_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--tokens", type=int, default=128, help="answer length per session")
    args = parser.parse_args()
    settings = parse_settings(["--max-running", "8", "--context-length", "2048"], env={})
    threads = os.cpu_count() or 1
    rss_before = rss_mib()
    rt = load_runtime(settings)
    rss_loaded = rss_mib()
    prompt_text = rt.tokenizer.decode(rt.tokenizer.render([Message(role="user", content=QUESTION)]), special=True)
    result: dict = {
        "machine": f"{platform.machine()}, {threads} cores, Python {platform.python_version()}",
        "model": Path(rt.info["model"]).name,
        "backend": rt.info["backend"],
        "tokens_per_answer": args.tokens,
        "rss_model_loaded_mib": rss_loaded - rss_before,
    }
    result["single_tps"] = single_client_tps(rt, args.tokens)
    for n in (1, 2, 4, 8):
        result[f"n{n}"] = concurrent(rt, n, args.tokens)
    result.update(turn5(rt, 150))
    result["rss_per_extra_session_mib"] = (result["n8"]["rss_mib_mid_run"] - result["n1"]["rss_mib_mid_run"]) / 7
    rt.close()
    result["raw_llamacpp_tps"] = raw_llamacpp_tps(prompt_text, args.tokens, threads)
    result["peak_rss_mib"] = peak_rss_mib()
    ratios = {
        "single_vs_raw": result["single_tps"] / result["raw_llamacpp_tps"],
        "aggregate8_vs_single": result["n8"]["aggregate_tps"] / result["single_tps"],
        "fairness_max_over_min": max(result[f"n{n}"]["fairness_max_over_min"] for n in (2, 4, 8)),
        "turn5_reuse_vs_reprefill": result["turn5_ftl_reuse_s"] / result["turn5_ftl_reprefill_s"],
    }
    result["ratios"] = ratios
    result["targets_met"] = {
        k: (v >= TARGETS[k] if k in ("single_vs_raw", "aggregate8_vs_single") else v <= TARGETS[k])
        for k, v in ratios.items()
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
