"""The room through the page vs through /v1, on one server in one run (issue 23).

    python3 bench/page_room.py --json [--people 16 --turns 3 --tokens 96 --burners 2]

`people` people over Streamlit's own websocket protocol (harness.streamlit_socket.Person: each its
own session, cookies and X-Forwarded-For address, fetching the server panel's load line once a second
as a tab does), all asking at the same moment, each going on to its next question as soon as its
answer ended (T turns); then the same questions from the same number of /v1 clients (bench/api.py's
streaming `openai` clients) on the same server. Greedy, answers up to `tokens`.

Page: completed, interrupted, refused, lost run ends (a full run whose end never reached its page),
timeouts, cross-talk (a page showing questions other than its own), first token as the page shows
it (from pressing Enter to the answer's first text) and as the engine measured it, and aggregate
tok/s from /metrics (generation tokens of source=page over the room's wall time). /v1: the same
figures from the client side. Ratios compare the two within this run; the box is shared, so the
load average is reported beside them.

Targets (issue 23, 2-core box): 16 x 3 x 96 with two burners: 48/48 completed, 0 interrupted,
0 lost run ends, 0 cross-talk. Quiet box: page aggregate >= 0.8 x /v1's, first-token p50
<= 1.5 x /v1's. Four burners, 16 x 2: 0 interrupted, 0 lost run ends. 32 x 2: 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import openai  # noqa: E402

from bench.api import over_http, room  # noqa: E402
from bench.load import burners  # noqa: E402
from edgechat.server import LOAD_PATH  # noqa: E402
from harness.room import _pct  # noqa: E402
from harness.servers import Server, hook_env  # noqa: E402
from harness.streamlit_socket import Person, answer  # noqa: E402

GENERATED = "edgechat:generation_tokens_total"
TOPICS = ("a dragon", "a lighthouse", "a robot", "a river", "a baker", "a comet", "a violin", "a fox")


def question(person: int, turn: int) -> str:
    """Tagged with the person, so a page showing someone else's question is seen."""
    return f"p{person} asks: tell me about {TOPICS[person % len(TOPICS)]}, part {turn + 1}."


async def page_person(tab: Person, i: int, turns: int, timeout_s: float, out: list[dict]) -> list[str]:
    asked: list[str] = []
    try:
        for turn in range(turns):
            asked.append(question(i, turn))
            await tab.ask(asked[-1])
            outcome = await answer(tab, turn, timeout_s, stall_s=min(timeout_s, 120))
            out.append({k: v for k, v in outcome.items() if k != "text"} | {"lost_run_ends": tab.view.lost_run_ends})
            if outcome["outcome"] != "completed":
                break
        shown = [text.split("\n")[0] for role, text in tab.view.messages() if role == "user"]
        return [] if shown == asked else [f"p{i}: expected {asked}, shown {shown}"]
    except Exception as err:  # noqa: BLE001 — a bench counts failures, it does not stop at one
        out.append({"outcome": "error", "error": f"{type(err).__name__}: {err}"[:200]})
        return []
    finally:
        await tab.close()


async def page_room(server: Server, people: int, turns: int, timeout_s: float) -> dict[str, Any]:
    outcomes: list[dict] = []
    tabs = [Person(server.url, f"10.91.{i // 250}.{i % 250 + 1}", poll=(LOAD_PATH,)) for i in range(people)]
    await asyncio.gather(*(tab.open() for tab in tabs), return_exceptions=True)  # then all ask at once
    before = server.metric(GENERATED, source="page") or 0.0
    start = time.monotonic()
    crossed = await asyncio.gather(*(page_person(tab, i, turns, timeout_s, outcomes) for i, tab in enumerate(tabs)))
    wall = time.monotonic() - start
    tokens = (server.metric(GENERATED, source="page") or 0.0) - before
    count = {kind: sum(o["outcome"] == kind for o in outcomes) for kind in
             ("completed", "interrupted", "refused", "lost_run_end", "timeout", "error")}  # fmt: skip
    shown = sorted(o["first_text_s"] for o in outcomes if o.get("first_text_s") is not None)
    engine = sorted(o["first_token_s"] for o in outcomes if o.get("first_token_s") is not None)
    return {
        "expected_turns": people * turns,
        **count,
        "lost_run_ends_seen": sum(o.get("lost_run_ends", 0) for o in outcomes if "lost_run_ends" in o),
        "cross_talk": sum(bool(c) for c in crossed),
        "cross_talk_examples": [c[0] for c in crossed if c][:3],
        "first_token_p50_s": _pct(shown, 0.5),
        "first_token_p95_s": _pct(shown, 0.95),
        "engine_first_token_p50_s": _pct(engine, 0.5),
        "engine_first_token_p95_s": _pct(engine, 0.95),
        "aggregate_tps": round(tokens / wall, 1),
        "wall_s": round(wall, 1),
        "examples": [o for o in outcomes if o["outcome"] != "completed"][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the only output mode)")
    parser.add_argument("--people", type=int, default=16)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96, help="max tokens per answer")
    parser.add_argument("--burners", type=int, default=0, help="CPU-burning processes beside the room")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one answer may take")
    parser.add_argument("--profile", help="write where the server's threads spent their time to this JSON file")
    args = parser.parse_args()
    flags = ["--temperature", "0", "--max-new-tokens", str(args.tokens), "--max-queue", str(max(32, args.people))]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load": f"{args.people} people x {args.turns} turns x up to {args.tokens} tokens, greedy, all at once",
        "burners": args.burners,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    burning = burners(args.burners)
    server = Server(*flags, env=hook_env("sampler", EDGECHAT_SAMPLE=args.profile) if args.profile else None)
    try:
        model = openai.OpenAI(base_url=server.url + "/v1", api_key="none").models.list().data[0].id
        result["page"] = asyncio.run(page_room(server, args.people, args.turns, args.timeout))
        result["loadavg_after_page"] = [round(x, 2) for x in os.getloadavg()]
        if args.profile:  # the page room's share of the profile, before the /v1 room adds to it
            time.sleep(2.5)
            shutil.copyfile(args.profile, args.profile + ".page.json")
        result["api"] = room(over_http(server.url, model, args.tokens), args.people, args.turns, question)
        result["loadavg_after_api"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        server.stop()
        for p in burning:
            p.kill()
    page, api = result["page"], result["api"]
    result["page_vs_api_tps"] = round(page["aggregate_tps"] / api["aggregate_tps"], 3) if api["aggregate_tps"] else None
    if page["first_token_p50_s"] and api["first_token_p50_s"]:
        result["page_vs_api_first_token_p50"] = round(page["first_token_p50_s"] / api["first_token_p50_s"], 2)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
