"""Is a Regenerate click lost right after an answer ends? One person in real chromium asks a short
question on a one-answer-at-a-time server, then clicks Regenerate the moment each answer is drawn
finished, N times. Per click, JSON lines with three independent witnesses:

- `wait_saw_stop`: playwright's `wait_for` on the Stop button (what test_page used to check);
- `stop_ms`: how long an in-page MutationObserver saw a Stop button on the page (every DOM state);
- `server_click_s` / `answered`: when the server got the click's rerun with the regenerate trigger
  (harness/stalltrace's trace) and whether the server finished one more page answer (/metrics).

A click is lost when the server never answered it; a missed Stop is a wait that did not see a Stop
button the observer saw. `python3 bench/regenerate_clicks.py --clicks 20 [--slow-run-s 1]`; put two
`python3 -c 'while True: pass' &` beside it for a loaded box."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.browser import CHROMIUM, CHROMIUM_ARGS, person_options  # noqa: E402
from harness.servers import REPO, Server  # noqa: E402

STOP_LIFE = """() => {
  window.__stops = []; let since = null;
  new MutationObserver(() => {
    const stop = [...document.querySelectorAll('button')].some((b) => b.innerText.includes('Stop gen'));
    if (stop && since === null) since = performance.now();
    if (!stop && since !== null) { window.__stops.push(Math.round(performance.now() - since)); since = null; }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


# Keeps a full run going `end_s` after its body: the click then lands while the run that drew the
# finished answer (and its Regenerate) is still running, so the click's rerun stops that run.
SLOW_END = """
import sys, time
if "streamlit" in sys.orig_argv[1:4]:
    from streamlit.runtime.scriptrunner import script_runner
    _exec = script_runner.exec_func_with_error_handling
    def _late_end(func, ctx):
        result = _exec(func, ctx)
        if not ctx.fragment_ids_this_run and result[2] is None:  # a full run that ends, not a rerun
            time.sleep({end_s})
        return result
    script_runner.exec_func_with_error_handling = _late_end
"""


def hooks(trace: Path, slow_run_s: float, slow_end_s: float) -> dict[str, str]:
    """PYTHONPATH for the server: one sitecustomize that loads harness/stalltrace's and, when asked,
    harness/slowruns' (Python imports only the first sitecustomize on the path) and SLOW_END."""
    folder = Path(tempfile.mkdtemp(prefix="edgechat-hooks-"))
    names = ["stalltrace"] + (["slowruns"] if slow_run_s > 0 else [])
    runs = "".join(f"runpy.run_path({str(REPO / 'harness' / n / 'sitecustomize.py')!r})\n" for n in names)
    end = SLOW_END.format(end_s=slow_end_s) if slow_end_s > 0 else ""
    (folder / "sitecustomize.py").write_text("import runpy\n" + runs + end)
    return {"PYTHONPATH": str(folder), "EDGECHAT_TRACE": str(trace), "EDGECHAT_SLOW_RUN_S": str(slow_run_s)}


def page_answers(server: Server) -> float:
    reasons = ("stop", "length")
    return sum(server.metric("edgechat:requests_total", finished_reason=r, source="page") or 0 for r in reasons)


def clicks(server: Server, n: int, question: str) -> list[dict]:
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(**person_options()).new_page()
        page.goto(server.url)
        box = page.get_by_test_id("stChatInputTextArea")
        box.wait_for(timeout=60_000)
        page.evaluate(STOP_LIFE)
        box.fill(question)
        box.press("Enter")
        for i in range(n):
            page.get_by_test_id("stChatMessage").nth(1).get_by_text("tok/s").wait_for(timeout=120_000)
            page.get_by_role("button", name="Regenerate").wait_for(timeout=120_000)
            before = page_answers(server)
            page.evaluate("() => { window.__stops = [] }")
            clicked = time.monotonic()
            page.get_by_role("button", name="Regenerate").click()
            try:
                page.get_by_role("button", name="Stop generating").wait_for(timeout=15_000)
                saw = True
            except PlaywrightTimeout:
                saw = False
            deadline = time.monotonic() + 60
            while page_answers(server) <= before and time.monotonic() < deadline:
                time.sleep(0.2)
            answered = page_answers(server) - before
            page.get_by_role("button", name="Regenerate").wait_for(timeout=120_000)
            time.sleep(0.3)
            rows.append({"click": i, "t": clicked, "wait_saw_stop": saw, "answered": answered,
                         "stop_ms": page.evaluate("() => window.__stops")})  # fmt: skip
        browser.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--slow-run-s", type=float, default=0.0, help="delay every full script run (harness/slowruns)")
    ap.add_argument("--slow-run-end-s", type=float, default=0.0, help="keep every full run going after its body")
    ap.add_argument("--question", default="What is 2+2?")
    args = ap.parse_args()
    trace = Path(tempfile.mkdtemp(prefix="edgechat-trace-")) / "trace.jsonl"
    server = Server("--temperature", "0", "--max-new-tokens", "800", "--context-length", "1024",
                    "--max-running", "1", env=hooks(trace, args.slow_run_s, args.slow_run_end_s))  # fmt: skip
    try:
        rows = clicks(server, args.clicks, args.question)
    finally:
        server.stop()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    got = [e["t"] for e in events if e["ev"] == "backmsg" and "regenerate" in (e.get("triggers") or [])]
    ends = [row["t"] for row in rows[1:]] + [float("inf")]
    for row, end in zip(rows, ends, strict=True):  # the click's own rerun: before the next click's
        mine = [t for t in got if row["t"] - 0.05 <= t < end - 0.05]
        row["server_click_s"] = round(mine[0] - row.pop("t"), 3) if mine else None
        print(json.dumps(row))
    how = [e.get("how") for e in events if e["ev"] == "rerun_request"]
    print(json.dumps({
        "clicks": len(rows),
        "rerun_requests_that_stopped_a_running_run": how.count("stopped-old+new-runner"),
        "lost": sum(1 for r in rows if not r["answered"]),
        "server_got": sum(1 for r in rows if r["server_click_s"] is not None),
        "stop_missed_by_wait": sum(1 for r in rows if not r["wait_saw_stop"]),
        "stop_never_drawn": sum(1 for r in rows if not r["stop_ms"]),
        "shortest_stop_ms": min((m for r in rows for m in r["stop_ms"]), default=None),
        "slow_run_s": args.slow_run_s,
        "slow_run_end_s": args.slow_run_end_s,
        "trace": str(trace),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
