"""Open N idle pages of app.py, then click "ping" on one page M times: how long each click takes
to show its answer. `python3 bench/stall_repro/drive.py --pages 6` with and without
`STREAMLIT_RUNNER_POST_SCRIPT_GC=false` / `REPRO_RUN_EVERY=0`, same box, same minute.
Standalone on purpose (plain Streamlit and playwright, nothing of edgechat or harness/, so its
own free_port) so that the folder can go to Streamlit's issue tracker as it is."""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the idle pages tick before clicking")
    args = parser.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(HERE / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true"]  # fmt: skip
    cmd += ["--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            pages = [browser.new_context().new_page() for _ in range(args.pages)]
            opened = time.monotonic()
            for page in pages:  # one after the other, as people walk in: the last page waits for the others' ticks
                page.goto(f"http://127.0.0.1:{port}", timeout=300_000)
                page.get_by_text("pong 0").wait_for(timeout=300_000)
            all_open_s = time.monotonic() - opened
            time.sleep(args.settle)
            page, took = pages[0], []
            for n in range(1, args.clicks + 1):
                start = time.monotonic()
                page.get_by_role("button", name="ping").click()
                page.get_by_text(f"pong {n}", exact=True).wait_for(timeout=120_000)
                took.append(time.monotonic() - start)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    took.sort()
    print(
        json.dumps(
            {
                "pages": args.pages,
                "run_every": os.environ.get("REPRO_RUN_EVERY", "0.5"),
                "post_script_gc": os.environ.get("STREAMLIT_RUNNER_POST_SCRIPT_GC", "true"),
                "open_all_pages_s": round(all_open_s, 1),
                "click_to_answer_p50_s": round(statistics.median(took), 3),
                "click_to_answer_max_s": round(took[-1], 3),
                "load1": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    gc.disable()  # the driver's own collections stay out of the measurement
    main()
