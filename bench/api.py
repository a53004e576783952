"""What HTTP costs: a room of programs through the OpenAI API vs the same load in-process.

    flock /work/bench.lock python3 bench/api.py --json

16 clients x 5 turns x up to 96 tokens, greedy, each client carrying its whole conversation
(as Open WebUI or a script does), all at once, three ways in one run on this machine:
- `in_process`: a client (`edgechat.clients.client_for`) per client over a runtime in this process
  (what a page session does: its conversation keeps its KV cache between turns);
- `api`: a real `streamlit run web_demo.py` and 16 threads of the official `openai` client,
  streaming, each client behind its own X-Forwarded-For address (the server trusts 127.0.0.1 as
  a proxy, so the default per-address limits apply; the API keeps each conversation's cache too)
  - the gap to `in_process` is what HTTP costs;
- `in_process_fresh`: in-process with a new session key every turn, so every turn re-reads its
  whole history - the gap to `in_process` is what KV reuse is worth.
Aggregate tok/s = completion tokens / wall time of the whole load. The machine is shared: the two
loads compared for HTTP (in_process, api) run twice each in mirrored order and are averaged, and
the load average after every run is reported with its figures.

    flock /work/bench.lock python3 bench/api.py --structured --json

What structured output costs the room (issue 26): one server, 16 streams at once of one turn each,
temperature 0.7, answers of up to --tokens (a constrained one asks for a story inside a JSON
string, so most run as long as the plain ones): `plain` (16 plain) against `mixed` (4 constrained
by a JSON schema through llama.cpp's grammar sampler + 12 plain), after one unreported warm-up
load, mirrored, averaged; each with the tok/s of its constrained and plain streams apart.
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
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import openai  # noqa: E402

from edgechat.clients import client_for  # noqa: E402
from edgechat.config import parse_settings  # noqa: E402
from edgechat.remote import openai_client  # noqa: E402
from edgechat.runtime import Runtime, load_runtime  # noqa: E402
from edgechat.types import Done, Message, SamplingParams, Text  # noqa: E402
from harness.servers import Server  # noqa: E402

TOPICS = ["a dragon", "a lighthouse", "a robot", "a river", "a baker", "a comet", "a violin", "a fox",
          "a glacier", "a library", "a sailor", "a volcano", "a garden", "a clock", "a desert", "an owl"]  # fmt: skip
ENGINE_FLAGS = ["--context-length", "2048", "--max-sessions", "16", "--temperature", "0"]

# One turn: (conversation so far) -> (answer text, completion tokens, prompt tokens, reused, first token s)
Turn = Callable[[list[Message]], tuple[str, int, int, int, float | None]]


def question(client: int, turn: int) -> str:
    return f"Tell me a long story about {TOPICS[client % len(TOPICS)]}, part {turn + 1}. Use many details."


def room(
    turn_for: Callable[[int], Turn], clients: int, turns: int, ask_text: Callable[[int, int], str] = question
) -> dict[str, Any]:
    """`clients` threads, each `turns` turns carrying its history; one figure set for the load."""
    results: list[tuple[int, int, int, float | None, int]] = []  # ..., first token s, turn
    errors: list[str] = []
    lock = threading.Lock()

    def person(i: int) -> None:
        ask = turn_for(i)
        history: list[Message] = []
        for t in range(turns):
            history.append(Message(role="user", content=ask_text(i, t)))
            try:
                text, completion, prompt, reused, first = ask(history)
            except Exception as err:  # noqa: BLE001 — counted and reported
                with lock:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
                return
            history.append(Message(role="assistant", content=text))
            with lock:
                results.append((completion, prompt, reused, first, t))

    threads = [threading.Thread(target=person, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    completion = sum(r[0] for r in results)
    firsts = sorted(r[3] for r in results if r[3] is not None)
    return {
        "turns_done": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": round(wall, 2),
        "completion_tokens": completion,
        "prompt_tokens": sum(r[1] for r in results),
        "reused_prompt_tokens": sum(r[2] for r in results),
        "aggregate_tps": round(completion / wall, 1),
        "first_token_p50_s": round(firsts[(len(firsts) - 1) // 2], 3) if firsts else None,
        "first_token_p95_s": round(firsts[int(0.95 * (len(firsts) - 1))], 3) if firsts else None,
        "first_token_p50_s_per_turn": [_median([r[3] for r in results if r[4] == t]) for t in range(turns)],
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def in_process(rt: Runtime, sampling: SamplingParams, fresh_sessions: bool) -> Callable[[int], Turn]:
    def turn_for(i: int) -> Turn:
        client = client_for(rt, sampling=sampling, source="terminal")

        def ask(history: list[Message]) -> tuple[str, int, int, int, float | None]:
            if fresh_sessions:
                client.cache_key = uuid.uuid4().hex
            start, first, text, stats = time.perf_counter(), None, [], None
            for event in client.stream(history, sampling):
                if isinstance(event, Text):
                    first = first or time.perf_counter() - start
                    text.append(event.text)
                elif isinstance(event, Done):
                    stats = event.stats
            if fresh_sessions:
                rt.backend.forget_cache(client.cache_key)
            assert stats is not None and stats.error is None, stats
            return "".join(text), stats.completion_tokens, stats.prompt_tokens, stats.reused_tokens, first

        return ask

    return turn_for


def over_http(
    url: str, model: str, max_tokens: int, extra: Callable[[int], dict[str, Any]] = lambda i: {"temperature": 0}
) -> Callable[[int], Turn]:
    """Client i's turns through the API; `extra(i)` adds request fields (sampling, response_format)."""

    def turn_for(i: int) -> Turn:
        person = {"X-Forwarded-For": f"10.9.0.{i + 1}"}
        client = openai_client(url + "/v1", None, timeout=600).with_options(default_headers=person)

        def ask(history: list[Message]) -> tuple[str, int, int, int, float | None]:
            start, first, text, usage = time.perf_counter(), None, [], None
            stream = client.chat.completions.create(
                model=model, messages=list(history), seed=42 + i, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True}, **extra(i),
            )  # fmt: skip
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter() - start
                    text.append(chunk.choices[0].delta.content)
            assert usage is not None
            cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
            return "".join(text), usage.completion_tokens, usage.prompt_tokens, cached or 0, first

        return ask

    return turn_for


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


ORDER = ("in_process", "api", "in_process_fresh", "api", "in_process")  # the pair to compare twice, mirrored
STRUCTURED_ORDER = ("plain", "mixed", "mixed", "plain")
CONSTRAINED = 4  # of the 16 streams in `mixed`
STORY_SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}


def structured_room(url: str, model: str, clients: int, tokens: int) -> dict[str, Any]:
    """`plain` vs `mixed` (CONSTRAINED of the clients under a JSON schema), mirrored."""
    fmt = {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}
    per_stream: list[tuple[str, str, int, float]] = []  # (load, kind, tokens, seconds)
    lock = threading.Lock()

    def load(name: str) -> Callable[[int], Turn]:
        def extra(i: int) -> dict[str, Any]:
            constrained = name == "mixed" and i < CONSTRAINED
            return {"temperature": 0.7, **({"response_format": fmt} if constrained else {})}

        def turn_for(i: int) -> Turn:
            inner = over_http(url, model, tokens, extra)(i)

            def ask(history: list[Message]) -> tuple[str, int, int, int, float | None]:
                start = time.perf_counter()
                out = inner([Message(role="user", content=f"Tell a long story about {TOPICS[i % 16]}, as JSON.")])
                kind = "constrained" if "response_format" in extra(i) else "plain"
                with lock:
                    per_stream.append((name, kind, out[1], time.perf_counter() - start))
                return out

            return ask

        return turn_for

    warmup = room(load("warmup"), clients, 1)  # the first load pays for cold caches: not compared
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "mixed": []}
    for name in STRUCTURED_ORDER:
        runs[name].append({**room(load(name), clients, 1), "loadavg_after": loadavg()})
    out: dict[str, Any] = {"warmup_tps": warmup["aggregate_tps"]}
    for name, done in runs.items():
        kinds = {}
        for kind in ("plain", "constrained"):
            mine = [(n, s) for load_name, k, n, s in per_stream if load_name == name and k == kind]
            if mine:
                kinds[f"{kind}_stream_tps_mean"] = round(statistics.mean(n / s for n, s in mine), 1)
        tps = [r["aggregate_tps"] for r in done]
        out[name] = {"aggregate_tps": round(statistics.mean(tps), 1), **kinds, "runs": done}
    out["mixed_vs_plain"] = round(out["mixed"]["aggregate_tps"] / out["plain"]["aggregate_tps"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96, help="max tokens per answer")
    parser.add_argument("--structured", action="store_true", help="measure structured output's cost instead")
    args = parser.parse_args()
    if args.structured:
        return structured_main(args)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load": f"{args.clients} clients x {args.turns} turns x up to {args.tokens} tokens, greedy, all at once",
        "order": list(ORDER),
        "loadavg_before": loadavg(),
    }
    flags = [*ENGINE_FLAGS, "--max-new-tokens", str(args.tokens)]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=args.tokens, seed=42)
    rt = load_runtime(parse_settings(flags, env={}))
    server = Server(*flags, "--trusted-proxy", "127.0.0.1")
    try:
        model = openai.OpenAI(base_url=server.url + "/v1", api_key="none").models.list().data[0].id
        loads = {
            "in_process": in_process(rt, sampling, False),
            "in_process_fresh": in_process(rt, sampling, True),
            "api": over_http(server.url, model, args.tokens),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
        for name in ORDER:  # mirrored, so a load that drifts during the run weighs on both sides alike
            runs[name].append({**room(loads[name], args.clients, args.turns), "loadavg_after": loadavg()})
    finally:
        server.stop()
        rt.close()
    result["model"] = model
    for name, done in runs.items():
        tps = [r["aggregate_tps"] for r in done]
        result[name] = {"aggregate_tps": round(statistics.mean(tps), 1), "runs": done}
    result["loadavg_after"] = loadavg()
    api, local, fresh = (result[n]["aggregate_tps"] for n in ("api", "in_process", "in_process_fresh"))
    result["api_vs_in_process"] = round(api / local, 3)  # the same work both ways: what HTTP costs
    result["in_process_fresh_vs_in_process"] = round(fresh / local, 3)  # what KV reuse is worth
    print(json.dumps(result, indent=None if args.json else 2))


def structured_main(args: argparse.Namespace) -> None:
    flags = [*ENGINE_FLAGS, "--max-new-tokens", str(args.tokens)]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load": f"{args.clients} streams x 1 turn x {args.tokens} tokens, temperature 0.7, all at once; "
        f"mixed: {CONSTRAINED} of them under a JSON schema (llama.cpp's grammar sampler)",
        "order": list(STRUCTURED_ORDER),
        "loadavg_before": loadavg(),
    }
    server = Server(*flags, "--trusted-proxy", "127.0.0.1")
    try:
        model = openai.OpenAI(base_url=server.url + "/v1", api_key="none").models.list().data[0].id
        result["model"] = model
        result.update(structured_room(server.url, model, args.clients, args.tokens))
    finally:
        server.stop()
    result["loadavg_after"] = loadavg()
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
