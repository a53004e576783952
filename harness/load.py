"""One room in real browsers: N people × T turns against one `streamlit run`, each person a
chromium context of their own (bench/load.py prints it as JSON; tests/e2e/test_load.py runs a small
one).

Each person types questions tagged with their name; afterwards every page must show exactly its own
questions, in order (cross-talk check, on the user messages only: the model may echo a question).
A stall is a page whose main area did not change for `stall_s` seconds while its person waited; a
slow answer that still streams is not one. A stall is recorded with what the page showed and the
browser's log, then the person reloads once and starts over, as people do; a second stall is an
error. With `trace`, the server logs its script runs (harness/stalltrace/sitecustomize.py) and each
stall is written beside the trace with the page's decoded websocket frames.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from pathlib import Path

from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

from harness.browser import CHROMIUM, CHROMIUM_ARGS, person_options
from harness.memory import rss_mib
from harness.servers import Server, hook_env
from harness.stalltrace.frames import JS_WS_ALL, JS_WS_TAIL, FrameLog, browser_lag, server_trace, session_ids

QUESTIONS = [
    "What is 2+2?",
    "What color is the sky on a clear day?",
    "What is the opposite of hot?",
    "How many legs does a dog have?",
    "What is 3+3?",
]
STATS = re.compile(r"first token ([\d.]+) s · ([\d.]+) tok/s · (\d+) tokens")


INPUT_READY = (
    "() => { const b = document.querySelector('[data-testid=stChatInputTextArea]'); return !!b && !b.disabled }"
)
ANSWERS_DONE = """n => Array.from(document.querySelectorAll('[data-testid=stChatMessage]'))
    .filter(m => m.innerText.includes('tok/s')).length > n"""
MAIN_TEXT = "() => document.getElementById('stMain')?.innerText ?? ''"  # the main area, chat input included
SNAPSHOT = """() => {
  const q = s => document.querySelector(s), box = q('[data-testid=stChatInputTextArea]');
  return {chat_input: box ? (box.disabled ? 'disabled' : 'ready') : 'absent',
    messages: Array.from(document.querySelectorAll('[data-testid=stChatMessage]')).map(m => m.innerText.slice(0, 80)),
    main: (document.getElementById('stMain')?.innerText ?? '').slice(-300),
    sidebar: (q('[data-testid=stSidebar]')?.innerText ?? '').slice(-300),
    status: q('[data-testid=stStatusWidget]')?.innerText ?? null,
    stale: document.querySelectorAll('[data-stale=true]').length}
}"""
POLL_MS = 2000


async def until(page, condition: str, arg: object, stall_s: float, quiet: list) -> None:  # noqa: ANN001
    """Wait for a JS condition; a stall is `stall_s` seconds in which the page's main area did not
    change (a slow answer that still streams is not a stall, however long it takes). Appends the
    longest such quiet spell of this wait and the wait's length to `quiet`."""
    started = last_change = time.monotonic()
    last_text, longest = None, 0.0
    try:
        while True:
            try:
                await page.wait_for_function(condition, arg=arg, timeout=POLL_MS, polling=200)
                return
            except PlaywrightTimeout:
                text = await page.evaluate(MAIN_TEXT)
                now = time.monotonic()
                longest = max(longest, now - last_change)
                if text != last_text:
                    last_text, last_change = text, now
                elif now - last_change > stall_s:
                    raise PlaywrightTimeout(f"no progress for {stall_s:.0f} s") from None
    finally:
        quiet.append((max(longest, time.monotonic() - last_change), time.monotonic() - started))


async def conversation(page, name: str, turns: int, stall_s: float, out: dict) -> list[str]:  # noqa: ANN001
    """One person's turns in one Streamlit session; returns the questions asked."""
    asked: list[str] = []
    out["completed_by"][name] = 0
    box = page.get_by_test_id("stChatInputTextArea")
    for turn in range(turns):
        question = f"[{name}] {QUESTIONS[turn % len(QUESTIONS)]}"
        out["stage"][name] = f"turn {turn + 1}: waiting for the input"
        await until(page, INPUT_READY, None, stall_s, out["quiet"])
        await box.fill(question)
        await box.press("Enter")
        asked.append(question)
        out["stage"][name] = f"turn {turn + 1}: waiting for the answer"
        await until(page, ANSWERS_DONE, turn, stall_s, out["quiet"])
        done = page.get_by_test_id("stChatMessage").filter(has_text="tok/s").nth(turn)
        match = STATS.search(await done.inner_text())
        if match:
            out["ftl"].append(float(match.group(1)))
            out["tokens"] += int(match.group(3))
        out["completed_by"][name] += 1
    out["stage"][name] = "done"
    return asked


async def person(browser, url: str, name: str, turns: int, stall_s: float, out: dict) -> None:  # noqa: ANN001
    """A person chats; a page stuck for `stall_s` is reported with what it showed, then reloaded
    once (a new session, the conversation starts over), as someone in the room would."""
    context = await browser.new_context(**person_options())
    page = await context.new_page()
    log: list[str] = []
    t0 = time.monotonic()
    frames = FrameLog(time.monotonic) if out.get("trace") else None

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - t0:.1f}s {what}")

    page.on("console", lambda m: note(f"console {m.type}: {m.text[:200]}"))
    page.on("pageerror", lambda e: note(f"pageerror: {e}"))
    page.on("websocket", lambda ws: (note("websocket open"), ws.on("close", lambda _: note("websocket closed"))))
    if frames:
        await frames.attach(page)
    try:
        for attempt in (1, 2):
            await page.goto(url)
            try:
                asked = await conversation(page, name, turns, stall_s, out)
                break
            except PlaywrightTimeout:
                shown = (await page.locator("body").inner_text())[-300:]
                stall = {"person": name, "stage": out["stage"][name], "page_text": shown, "browser_log": log[-20:]}
                if frames:
                    stall["record"] = await investigate(page, out, name, shown, log, frames)
                out["stalls"].append(stall)
                if attempt == 2:
                    raise
        if frames:
            js = await page.evaluate(JS_WS_ALL)
            out["browser_lag"].append(browser_lag(frames, js, time.time() - time.monotonic()))
        users = page.get_by_test_id("stChatMessage").filter(has=page.get_by_test_id("stChatMessageAvatarUser"))
        shown_questions = [t.strip() for t in await users.get_by_test_id("stChatMessageContent").all_inner_texts()]
        if shown_questions != asked:
            out["cross_talk"] += 1
            out["cross_talk_examples"].append({"person": name, "expected": asked, "shown": shown_questions[:10]})
    except Exception as err:  # noqa: BLE001 — a load run counts failures, it does not stop at one
        out["errors"] += 1
        out["error_examples"].append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    finally:
        await context.close()


async def investigate(page, out: dict, name: str, shown: str, log: list[str], frames: FrameLog) -> str:  # noqa: ANN001
    """What a stuck page showed, then whether it catches up by itself within another `--stall`
    seconds (slow) or not (stuck); written with its frames and the server's trace to one JSON file."""
    snapshot = await page.evaluate(SNAPSHOT)
    js_ws = await page.evaluate(JS_WS_TAIL)
    waited = time.monotonic()
    condition, arg = (INPUT_READY, None) if "input" in out["stage"][name] else (ANSWERS_DONE, out["completed_by"][name])
    try:
        await page.wait_for_function(condition, arg=arg, timeout=out["stall_s"] * 1000, polling=500)
        recovered_after = round(time.monotonic() - waited, 1)
    except PlaywrightTimeout:
        recovered_after = None
    return save_stall(out, name, shown, log, frames, snapshot, js_ws, recovered_after)


def save_stall(
    out: dict, name: str, shown: str, log: list[str], frames: FrameLog, snapshot: dict, js_ws: dict, recovered_after
) -> str:  # noqa: ANN001
    """Write what a stuck page saw and what the server did for its session(s) to one JSON file."""
    decoded = frames.decoded()
    sessions = session_ids(decoded)
    trace: Path = out["trace"]
    record = {
        "person": name,
        "stage": out["stage"][name],
        "at": time.monotonic(),
        "recovered_after_s": recovered_after,
        "page_text": shown,
        "browser_log": log,
        "sessions": sessions,
        "websockets": frames.sockets,
        "page": snapshot,
        "js_websocket_messages": js_ws,
        "frames": decoded,
        "server": server_trace(trace, sessions),
    }
    path = trace.with_name(f"{trace.stem}-stall-{name}-{len(out['stalls'])}.json")
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    return str(path)


async def run(
    sessions: int, turns: int, timeout_s: float, flags: list[str], stall_s: float = 90.0, trace: Path | None = None
) -> dict:
    """One room; with `trace` (a .jsonl path) the server logs its script runs there and each stall
    is written beside it with the page's websocket frames (harness/stalltrace)."""
    server = traced_server(flags, trace) if trace else Server(*flags)
    try:
        out: dict = {"completed_by": {}, "errors": 0, "cross_talk": 0, "tokens": 0, "ftl": [], "stage": {}}
        out["trace"], out["stall_s"], out["quiet"], out["browser_lag"] = trace, stall_s, [], []
        out["cross_talk_examples"], out["error_examples"], out["stalls"] = [], [], []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            warmup = await browser.new_page()  # the first visit loads the model; measure after it
            await warmup.goto(server.url)
            await warmup.get_by_test_id("stChatInputTextArea").wait_for(timeout=int(timeout_s * 1000))
            await warmup.close()
            rss_before = rss_mib(server.proc.pid)
            start = time.monotonic()
            tasks = [
                asyncio.create_task(person(browser, server.url, f"p{i}", turns, stall_s, out)) for i in range(sessions)
            ]
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            if late:  # a person still waiting when the run's time is up: say where
                out["error_examples"].append(f"timed out after {timeout_s:.0f} s; stages: {out['stage']}")
            for task in late:
                task.cancel()
                out["errors"] += 1
            wall = time.monotonic() - start
            cpu = {"server_cpu_s": cpu_seconds([server.proc.pid]), "browser_cpu_s": cpu_seconds(chromium_pids())}
            await browser.close()
        ftl = sorted(out.pop("ftl"))
        return {
            "sessions": sessions,
            "turns_per_session": turns,
            "completed_turns": sum(out["completed_by"].values()),
            "expected_turns": sessions * turns,
            "errors": out["errors"],
            "cross_talk": out["cross_talk"],
            "stalls": len(out["stalls"]),
            "ftl_p50_s": statistics.median(ftl) if ftl else None,
            "ftl_p95_s": ftl[min(len(ftl) - 1, round(0.95 * (len(ftl) - 1)))] if ftl else None,
            "aggregate_tps": out["tokens"] / wall,
            "wall_s": wall,
            "server_rss_before_mib": rss_before,
            "server_rss_after_mib": rss_mib(server.proc.pid),
            "examples": out["cross_talk_examples"][:3] + out["error_examples"][:3],
            "stall_examples": [{k: v for k, v in s.items() if k != "record"} for s in out["stalls"][:3]],
            "stall_list": out["stalls"],
            "browser_js_lag_max_s": max((x for x in out["browser_lag"] if x is not None), default=None),
            **cpu,
            "longest_quiet_s": round(max((q for q, _ in out["quiet"]), default=0.0), 1),
            "longest_wait_s": round(max((w for _, w in out["quiet"]), default=0.0), 1),
            "waits_over_60s": sum(1 for _, w in out["quiet"] if w > 60),  # what the CI test's old timeout called stalls
        }
    finally:
        server.stop()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (/proc/PID/stat, clock ticks)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return round(total / os.sysconf("SC_CLK_TCK"), 1)


def chromium_pids() -> list[int]:
    """This bench's chromium processes (descendants of this process)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid], names[pid] = int(tail.split()[1]), head.split("(", 1)[1]
    mine = {os.getpid()}
    for _ in range(6):  # bench -> playwright driver -> chromium -> zygote -> renderer
        mine |= {pid for pid, parent in parents.items() if parent in mine}
    return [pid for pid in mine if "chrom" in names.get(pid, "")]


def traced_server(flags: list[str], trace: Path) -> Server:
    """`streamlit run` with harness/stalltrace/sitecustomize.py loaded and writing to `trace`."""
    return Server(*flags, env=hook_env("stalltrace", EDGECHAT_TRACE=str(trace)))
