"""The room over HTTP against llama.cpp's own server (issue 29): `bench/room.py --peer-server PATH`.

U people x T turns x up to N tokens (default 16 x 5 x 96), greedy, everyone at once, each person
a thread of the official `openai` client (streaming, carrying the whole conversation), against:
- `peer`: llama-server (the binary given; built from the llama.cpp that llama-cpp-python's sdist
  vendors; this repository builds nothing of it) with the embedded GGUF, `-np S` slots of
  --context-length tokens, one KV buffer per slot, as many threads as edgechat;
- `edgechat`: a real `streamlit run web_demo.py` (harness.servers) with the same GGUF and
  context, `--max-running S`, its `/v1`.
Configurations: S = 16 and S = 8 (people outnumber slots and sequences). Passes interleave peer
and edgechat and mirror the order on every other pass; each side keeps its better pass.

Beside the figures, each side's profile: edgechat's own timers from its /metrics (llama_decode,
cache moves, sampling, the rest of the scheduler's step) and CPU seconds by thread of the server
process (the main thread is the event loop that streams the SSE); llama-server's /metrics and, if
built with its DEBUG_TIMINGS switch, its loop's split (batch / llama_decode / sample and send).
Ratios are edgechat / peer: aggregate tok/s (>= 1.0 wanted) and last turn's first-token p50
(<= 0.5 wanted).
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

from bench.api import over_http, room
from edgechat.config_values import default_model_path
from harness.peer import LlamaServer, cpu_seconds
from harness.servers import Server

CONTEXT = 2048
DEBUG_EVERY_S = 5.2
SLOTS = {"16": 16, "8": 8}
PROFILE_KEYS = (
    "steps", "step_s", "step_cpu_s", "decode_s", "cache_moves", "cache_moves_s", "sampling_s",
    "generation_tokens", "engine_prompt_tokens_prefilled", "turns_reused", "turns_restored", "turns_reprefilled",
    "sessions_dropped", "slices", "ttft_sum_s", "ttft_count",
)  # fmt: skip
EDGECHAT_SERIES = {
    "scheduler_steps_total": "steps", "scheduler_step_seconds_total": "step_s",
    "scheduler_step_cpu_seconds_total": "step_cpu_s", "engine_decode_seconds_total": "decode_s",
    "engine_cache_moves_total": "cache_moves", "engine_cache_move_seconds_total": "cache_moves_s",
    "engine_sampling_seconds_total": "sampling_s",
    "engine_prompt_tokens_prefilled_total": "engine_prompt_tokens_prefilled",
    "turns_reused_total": "turns_reused", "turns_restored_total": "turns_restored",
    "turns_reprefilled_total": "turns_reprefilled", "sessions_dropped_total": "sessions_dropped",
    "time_slices_total": "slices",
    "time_to_first_token_seconds_sum": "ttft_sum_s", "time_to_first_token_seconds_count": "ttft_count",
}  # fmt: skip


def edgechat_metrics(url: str) -> dict[str, float]:
    """edgechat's /metrics, the profile's series by their stats() names (sources summed)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"edgechat:(\w+)(\{[^}]*\})? ([-\d.e+]+)$", line)
        if not found:
            continue
        name, value = found.group(1), float(found.group(3))
        if name == "generation_tokens_total":
            out["generation_tokens"] = out.get("generation_tokens", 0.0) + value
        elif name in EDGECHAT_SERIES:  # per-source series (the histograms) are summed
            key = EDGECHAT_SERIES[name]
            out[key] = out.get(key, 0.0) + value if found.group(2) else value
    return out


def cpu_backend(pid: int) -> list[str]:
    """The file a server's ggml CPU kernels came from (LD_LIBRARY_PATH may swap it for both)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if "libggml-cpu" in line})


def served_model(url: str) -> str:
    return openai.OpenAI(base_url=url + "/v1", api_key="none").models.list().data[0].id


def run_edgechat(
    slots: int, people: int, turns: int, tokens: int, threads: int, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    flags = ["--context-length", str(CONTEXT), "--max-running", str(slots), "--temperature", "0"]
    flags += ["--max-new-tokens", str(tokens), "--threads", str(threads), "--trusted-proxy", "127.0.0.1", *extra]
    server = Server(*flags)
    try:
        load = over_http(server.url, served_model(server.url), tokens)
        load(0)([{"role": "user", "content": "Hello"}])  # warm-up: the model's pages, the first decode
        before, cpu_before = edgechat_metrics(server.url), cpu_seconds(server.proc.pid)
        result = room(load, people, turns)
        after, cpu_after = edgechat_metrics(server.url), cpu_seconds(server.proc.pid)
        backend = cpu_backend(server.proc.pid)
    finally:
        server.stop()
    spent = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in PROFILE_KEYS}
    inside = spent["decode_s"] + spent["cache_moves_s"] + spent["sampling_s"]
    spent["python_around_step_s"] = round(spent["step_s"] - inside, 3)
    spent["scheduler_idle_s"] = round(result["wall_s"] - spent["step_s"], 3)
    spent["process_cpu_s"] = round(cpu_after["total"] - cpu_before["total"], 2)
    spent["event_loop_cpu_s"] = round(cpu_after["main_thread"] - cpu_before["main_thread"], 2)
    spent["threads_cpu_end"] = cpu_after["busiest"]
    # The server's own first-token wait (submit to first token; the client's figure adds HTTP)
    spent["server_ttft_mean_s"] = round(spent.pop("ttft_sum_s") / max(1.0, spent.pop("ttft_count")), 3)
    return {**result, "flags": " ".join(flags), "ggml_cpu_backend": backend, "profile": spent}


def run_peer(binary: Path, slots: int, people: int, turns: int, tokens: int, threads: int) -> dict[str, Any]:
    server = LlamaServer(binary, default_model_path(), slots, CONTEXT, threads)
    try:
        load = over_http(server.url, served_model(server.url), tokens)
        load(0)([{"role": "user", "content": "Hello"}])
        before, cpu_before = server.metrics(), cpu_seconds(server.proc.pid)
        timings_before = server.debug_timings()
        result = room(load, people, turns)
        after, cpu_after = server.metrics(), cpu_seconds(server.proc.pid)
        time.sleep(DEBUG_EVERY_S)  # its loop logs DEBUG_TIMINGS at most every 5 s, when it runs:
        load(0)([{"role": "user", "content": "Hi"}])  # one more tiny request brings the last block out
        timings_after = server.debug_timings()
        backend = cpu_backend(server.proc.pid)
    finally:
        server.stop()
    counters = ("prompt_tokens_total", "prompt_seconds_total", "tokens_predicted_total",
                "tokens_predicted_seconds_total", "n_decode_total", "prompt_tokens_cached_total")  # fmt: skip
    profile: dict[str, Any] = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in counters}
    profile["n_busy_slots_per_decode_end"] = round(after.get("n_busy_slots_per_decode", 0.0), 2)
    # DEBUG_TIMINGS is logged every 5 s: the last block before and after the load bound it.
    for key in ("iterations", "pre_decode_s", "decode_s", "post_decode_s"):
        if key in timings_after:
            profile[f"loop_{key}"] = round(timings_after[key] - timings_before.get(key, 0.0), 2)
    profile["process_cpu_s"] = round(cpu_after["total"] - cpu_before["total"], 2)
    profile["threads_cpu_end"] = cpu_after["busiest"]
    return {
        **result,
        "command": server.command,
        "ggml_cpu_backend": backend,  # the file its CPU kernels came from (LD_LIBRARY_PATH may swap it)
        "profile": profile,
    }


def peer_room(
    binary: Path, configs: list[str], people: int, turns: int, tokens: int, passes: int, variants: list[str] = ()
) -> dict[str, Any]:
    """Every configuration, `passes` times, peer and edgechat interleaved (mirrored each pass);
    `variants`: more edgechat sides, each with these flags added (e.g. "--ubatch 256")."""
    threads = os.cpu_count() or 1
    sides = ["peer", "edgechat", *(f"edgechat {flags}" for flags in variants)]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {side: [] for side in sides} for c in configs}
    for n in range(passes):
        for name in configs:
            order = sides if n % 2 == 0 else sides[::-1]
            for side in order:
                slots = SLOTS[name]
                if side == "peer":
                    run = run_peer(binary, slots, people, turns, tokens, threads)
                else:
                    extra = tuple(side.split()[1:])
                    run = run_edgechat(slots, people, turns, tokens, threads, extra)
                run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                runs[name][side].append(run)
                brief = {k: run[k] for k in ("aggregate_tps", "first_token_p50_s_per_turn", "errors", "loadavg_after")}
                print(f"pass {n + 1} {name} {side}: {brief}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        "order": "per pass: peer, edgechat, then its variants, mirrored every other pass; best pass kept",
        # Both servers inherit it (edgechat.engines.llamacpp sets PASSIVE unless it is set): with
        # other work on 2 cores, ggml's spinning OpenMP barriers cost a spinner its time slices.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),  # another ggml CPU backend, for both
    }
    for name, by_side in runs.items():
        best = {side: max(done, key=lambda r: r["aggregate_tps"]) for side, done in by_side.items()}
        peer = best["peer"]
        out[name] = {
            "slots": SLOTS[name],
            **{
                side: {**run, "aggregate_tps_passes": [r["aggregate_tps"] for r in by_side[side]]}
                for side, run in best.items()
            },
        }
        for side in sides[1:]:  # "ratios" / "targets_met" for edgechat's defaults, then per variant
            suffix = side.removeprefix("edgechat")
            ratios = _ratios(best[side], peer)
            out[name]["ratios" + suffix] = ratios
            out[name]["targets_met" + suffix] = {
                "aggregate_vs_peer>=1.0": ratios["aggregate_vs_peer"] >= 1.0,
                "last_turn_ftl_p50_vs_peer<=0.5": (ratios["last_turn_ftl_p50_vs_peer"] or 99) <= 0.5,
            }
    return out


def _ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    return {
        "aggregate_vs_peer": round(ours["aggregate_tps"] / peer["aggregate_tps"], 3),
        "last_turn_ftl_p50_vs_peer": _ratio(
            ours["first_token_p50_s_per_turn"][-1], peer["first_token_p50_s_per_turn"][-1]
        ),
        "completion_tokens_vs_peer": round(ours["completion_tokens"] / max(1, peer["completion_tokens"]), 3),
        # tokens per CPU second of the server process: what each side makes of the CPU it got,
        # less at the mercy of what else the shared box ran during its pass
        "tokens_per_cpu_s_vs_peer": _ratio(_per_cpu(ours), _per_cpu(peer)),
    }


def _per_cpu(run: dict[str, Any]) -> float | None:
    cpu = run["profile"]["process_cpu_s"]
    return run["completion_tokens"] / cpu if cpu else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
