"""Real-browser load: N people × T turns against one `streamlit run`: `python3 bench/load.py --json`.

Each person is a separate chromium context (its own Streamlit session) typing questions tagged with
its own name; afterwards every page must show exactly its own questions, in order (cross-talk
check, on the user messages only: the model may echo a question). Prints one JSON object: completed
turns, errors, cross-talk, stalls, first-token latency p50/p95 and aggregate tok/s as the pages show
them, the server's RSS before and after, and the CPU time the server and the browsers used.

A stall is a page whose main area did not change for `--stall` seconds while its person waited; a
slow answer that still streams is not one (`longest_wait_s` reports how long the slowest wait took:
the CI test's old per-wait timeout called every wait over 60 s a stall). A stall is reported with
what the page showed and the browser's log, then the person reloads once and starts over, as people
do; a second stall is an error.

Stress mode (issue 13): `--repeat N --burners K --lock /work/bench.lock --trace DIR` runs N rooms in a
row, each with K CPU-burning processes beside it and holding the lock; `--trace` makes the server
log its script runs (harness/stalltrace/sitecustomize.py) and writes each stall to DIR as one JSON
file: the page's decoded websocket frames, what its JavaScript handled, a DOM snapshot, whether it
caught up by itself, and the server's trace for that session. One line per room goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from harness.load import run  # noqa: E402

BURN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"  # ends with the bench


def burners(n: int) -> list[subprocess.Popen]:
    """CPU-burning processes beside the room, as on a loaded CI box."""
    return [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(n)]


def stress(args: argparse.Namespace, flags: list[str]) -> dict:
    """`--repeat N` rooms in a row (a fresh server each), with `--burners K` beside each; with
    `--lock PATH` each room (burners included) holds that lock, so other benchmarks on a shared box
    run between rooms, never during one."""
    trace_dir = Path(args.trace) if args.trace else None
    if trace_dir:
        trace_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.repeat):
        trace = trace_dir / f"run{i:03d}.jsonl" if trace_dir else None
        with exclusive(args.lock):
            load = os.getloadavg()[0]
            burning = burners(args.burners)
            try:
                result = asyncio.run(run(args.sessions, args.turns, args.timeout, flags, args.stall, trace))
            finally:
                for proc in burning:
                    proc.kill()
                    proc.wait()
        runs.append(result)
        keys = ("completed_turns", "errors", "stalls", "wall_s", "longest_quiet_s", "longest_wait_s", "waits_over_60s")
        brief = {k: result[k] for k in (*keys, "server_cpu_s", "browser_cpu_s", "browser_js_lag_max_s")}
        if trace:
            brief["server"] = server_summary(trace)
        records = [s.get("record") for s in result["stall_list"]]
        print(
            json.dumps({"run": i, **brief, "load1_before": load, "stall_records": records}), file=sys.stderr, flush=True
        )
    return {
        "repeat": args.repeat,
        "burners": args.burners,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "runs_with_stalls": sum(1 for r in runs if r["stalls"]),
        "stalls": sum(r["stalls"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "cross_talk": sum(r["cross_talk"] for r in runs),
        "completed_turns": sum(r["completed_turns"] for r in runs),
        "expected_turns": sum(r["expected_turns"] for r in runs),
        "stall_examples": [s for r in runs for s in r["stall_list"]][:10],
        "load_average": os.getloadavg(),
    }


def server_summary(trace: Path) -> dict:
    """From the heartbeat lines of a trace: how late the event loop ran, the most messages waiting
    for one page, and the share of wall time spent in gen-2 garbage collection."""
    beats = [json.loads(line) for line in trace.read_text().splitlines() if '"loop_lag"' in line]
    if len(beats) < 2:
        return {}
    lags = sorted(b["lag"] for b in beats)
    wall = beats[-1]["t"] - beats[0]["t"]
    return {
        "loop_lag_p99_s": lags[int(0.99 * (len(lags) - 1))],
        "loop_lag_max_s": lags[-1],
        "unsent_max": max((q[0] for b in beats for q in b["queues"].values()), default=0),
        "gc2_share": round((beats[-1]["gc2_s"] - beats[0]["gc2_s"]) / wall, 3),
        "gc2_count": beats[-1]["gc2_n"] - beats[0]["gc2_n"],
        "cpu_share": round((beats[-1]["cpu_s"] - beats[0]["cpu_s"]) / wall, 3),
    }


@contextlib.contextmanager
def exclusive(path: str | None) -> Iterator[None]:
    """Hold `flock PATH` (as `flock /work/bench.lock CMD` does) for the duration, if a path is given."""
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the whole run, seconds")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stall", type=float, default=90.0, help="a page without progress this long is reloaded once")
    parser.add_argument("--repeat", type=int, default=1, help="stress: this many rooms in a row, a fresh server each")
    parser.add_argument("--burners", type=int, default=0, help="stress: CPU-burning processes beside the rooms")
    parser.add_argument("--trace", help="stress: a folder for the server's run trace and one JSON file per stall")
    parser.add_argument("--lock", help="stress: hold this flock file during each room (e.g. /work/bench.lock)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill PID`: servers and burners are stopped
    flags = ["--temperature", "0", "--max-new-tokens", str(args.max_new_tokens), "--max-sessions", str(args.sessions)]
    if args.repeat > 1 or args.burners or args.trace or args.lock:
        print(json.dumps(stress(args, flags), indent=2, ensure_ascii=False))
        return
    result = asyncio.run(run(args.sessions, args.turns, args.timeout, flags, args.stall))
    result.pop("stall_list")
    result["targets_met"] = {
        "all_turns": result["completed_turns"] == result["expected_turns"],
        "no_errors": result["errors"] == 0,
        "no_cross_talk": result["cross_talk"] == 0,
        "no_stalls": result["stalls"] == 0,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
