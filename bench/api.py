"""What HTTP costs: a room of programs through the OpenAI API vs the same load in-process.

    flock /work/bench.lock python3 bench/api.py --json

16 clients x 5 turns x up to 96 tokens, greedy, each client carrying its whole conversation
(as Open WebUI or a script does), all at once, three ways in one run on this machine:
- `in_process`: a ChatClient per client over a runtime in this process (what a page session does:
  its conversation keeps its KV cache between turns);
- `api`: a real `streamlit run web_demo.py` and 16 threads of the official `openai` client,
  streaming, each client behind its own X-Forwarded-For address (the server trusts 127.0.0.1 as
  a proxy, so the default per-address limits apply; the API keeps each conversation's cache too)
  - the gap to `in_process` is what HTTP costs;
- `in_process_fresh`: in-process with a new session key every turn, so every turn re-reads its
  whole history - the gap to `in_process` is what KV reuse is worth.
Aggregate tok/s = completion tokens / wall time of the whole load. The machine is shared: the two
loads compared for HTTP (in_process, api) run twice each in mirrored order and are averaged, and
the load average after every run is reported with its figures.
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

from edgechat.client import ChatClient  # noqa: E402
from edgechat.config import parse_settings  # noqa: E402
from edgechat.engines.remote import openai_client  # noqa: E402
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
    results: list[tuple[int, int, int, float | None]] = []
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
                results.append((completion, prompt, reused, first))

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
    }


def in_process(rt: Runtime, sampling: SamplingParams, fresh_sessions: bool) -> Callable[[int], Turn]:
    def turn_for(i: int) -> Turn:
        client = ChatClient(rt.backend, rt.tokenizer, sampling=sampling, source="terminal")

        def ask(history: list[Message]) -> tuple[str, int, int, int, float | None]:
            if fresh_sessions:
                client.session = uuid.uuid4().hex
            start, first, text, stats = time.perf_counter(), None, [], None
            for event in client.stream(history, sampling):
                if isinstance(event, Text):
                    first = first or time.perf_counter() - start
                    text.append(event.text)
                elif isinstance(event, Done):
                    stats = event.stats
            if fresh_sessions:
                rt.backend.forget_session(client.session)
            assert stats is not None and stats.error is None, stats
            return "".join(text), stats.completion_tokens, stats.prompt_tokens, stats.reused_tokens, first

        return ask

    return turn_for


def over_http(url: str, model: str, max_tokens: int) -> Callable[[int], Turn]:
    def turn_for(i: int) -> Turn:
        person = {"X-Forwarded-For": f"10.9.0.{i + 1}"}
        client = openai_client(url + "/v1", None, timeout=600).with_options(default_headers=person)

        def ask(history: list[Message]) -> tuple[str, int, int, int, float | None]:
            start, first, text, usage = time.perf_counter(), None, [], None
            stream = client.chat.completions.create(
                model=model, messages=list(history), temperature=0, seed=42, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96, help="max tokens per answer")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
