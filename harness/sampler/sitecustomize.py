"""Where the `streamlit run` a bench starts spends its threads' time (EDGECHAT_SAMPLE=PATH.json:
harness.servers.hook_env("sampler", EDGECHAT_SAMPLE=...); bench/page_room.py --profile PATH).

Every 5 ms a thread looks at every other thread's Python stack (sys._current_frames) and counts,
per kind of thread (the event loop, page script runs, answer threads, the scheduler), the innermost
frame ("self") and every edgechat/streamlit function on the stack ("inclusive"), and each kind's CPU seconds
(/proc/self/task). A thread blocked in a Python-level wait is counted as waiting; one inside a C
call (time.sleep, llama.cpp) shows as its caller, so read "self" beside "cpu_s". Written to PATH
every 2 s. Nothing here runs unless the variable is set.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

PATH = os.environ.get("EDGECHAT_SAMPLE")
IDLE = {"wait", "sleep", "select", "_worker", "get", "acquire", "wait_for", "poll", "_wait_for_tstate_lock"}


def kind(name: str) -> str:
    if name.startswith("ScriptRunner"):
        return "page script runs"
    if name.startswith("edgechat-answer"):
        return "answer threads"
    if name == "MainThread":
        return "event loop"
    return "scheduler" if "sched" in name.lower() else name.split("-")[0]


def cpu_s(native_id: int) -> float:
    """A thread's user + system CPU seconds so far (/proc/self/task/TID/stat)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _install(path: str) -> None:
    cpu: dict[int, tuple[str, float]] = {}  # native thread id -> (kind, CPU seconds at its last look)
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    samples: collections.Counter = collections.Counter()

    def where(code: object) -> str:
        file = code.co_filename  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1] if "site-packages/" in file else os.path.relpath(file)
        return f"{short}:{code.co_name}"  # type: ignore[attr-defined]

    def sample() -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        last = last_cpu = time.monotonic()
        while True:
            time.sleep(0.005)
            for ident, frame in sys._current_frames().items():
                if ident == threading.get_ident():
                    continue
                if ident not in names:
                    names = {t.ident: t.name for t in threading.enumerate()}
                group = kind(names.get(ident, "") or "")
                samples[group] += 1
                if frame.f_code.co_name in IDLE:
                    own[group]["(waiting)"] += 1
                    continue
                own[group][where(frame.f_code)] += 1
                seen = set()
                while frame is not None:
                    name = where(frame.f_code)
                    if ("edgechat" in name or "streamlit/" in name or "web_demo" in name) and name not in seen:
                        inclusive[group][name] += 1
                        seen.add(name)
                    frame = frame.f_back
            if time.monotonic() - last_cpu > 0.5:  # CPU of every live thread, kept after it ends
                last_cpu = time.monotonic()
                for t in threading.enumerate():
                    if t.native_id is not None:
                        cpu[t.native_id] = (kind(t.name), cpu_s(t.native_id))
            if time.monotonic() - last > 2:
                names = {t.ident: t.name for t in threading.enumerate()}
                last = time.monotonic()
                by_kind: collections.Counter = collections.Counter()
                for group, seconds in cpu.values():
                    by_kind[group] += seconds
                report = {
                    g: {
                        "samples": n,
                        "cpu_s": round(by_kind[g], 2),
                        "self": own[g].most_common(25),
                        "inclusive": inclusive[g].most_common(40),
                    }
                    for g, n in samples.items()
                }
                with open(path, "w") as out:
                    json.dump(report, out, indent=1)

    threading.Thread(target=sample, name="edgechat-sampler", daemon=True).start()


if PATH and "streamlit" in sys.orig_argv[1:4]:  # `python -m streamlit run ...` only
    _install(PATH)
