"""llama.cpp's own server (`llama-server`) as a peer for benches, and what a server process spent.

The bench is given a binary (built from the llama.cpp that llama-cpp-python's sdist vendors; this
repository builds nothing of it). It starts on a free 127.0.0.1 port with the embedded GGUF, one
KV buffer per slot (`-np N`, as edgechat keeps one per sequence), `--metrics` on, and is stopped by
its owner. Its own timings come from its /metrics and, when the binary was built with the
server's `DEBUG_TIMINGS` switch (server-context.cpp), from the averages it logs every 5 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from harness.servers import answers, end, free_port

START_TIMEOUT_S = 120.0
TICK = os.sysconf("SC_CLK_TCK")
DEBUG_LINE = re.compile(r"(n_pre_decode|avg t_pre_decode|avg t_decode|avg t_post_decode)\s+= ([\d.]+|nan|-?inf)")


class LlamaServer:
    """`llama-server` with `slots` slots of `context` tokens each, greedy answers as asked."""

    def __init__(self, binary: Path, model: Path, slots: int, context: int, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log")  # noqa: SIM115
        cmd = [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(slots), "-c", str(slots * context), "-t", str(threads), "-tb", str(threads),
            "--no-kv-unified", "--metrics", "--jinja", "--no-webui",
        ]  # fmt: skip
        self.command = " ".join(cmd[1:])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if answers(self.proc, self.url + "/health", START_TIMEOUT_S):
            return
        tail = self.output()[-2000:]
        self.stop()
        raise RuntimeError(f"llama-server did not start within {START_TIMEOUT_S:.0f} s: {tail}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metrics(self) -> dict[str, float]:
        """Its /metrics, `llamacpp:` names without the prefix."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("llamacpp:") and "{" not in line:
                name, _, value = line[len("llamacpp:") :].partition(" ")
                out[name] = float(value)
        return out

    def debug_timings(self) -> dict[str, float]:
        """Seconds in its loop's three parts (build the batch / llama_decode / sample and send),
        from the last DEBUG_TIMINGS block it logged; empty for a binary built without it."""
        last: dict[str, float] = {}
        for key, value in DEBUG_LINE.findall(self.output()):
            last[key] = float(value)
        n = last.get("n_pre_decode")
        if not n:
            return {}
        # Each average is over its own count; the three counts are equal on a CPU-only server
        # (one decode per iteration unless a batch is split), so n scales all three.
        return {
            "iterations": n,
            "pre_decode_s": round(last.get("avg t_pre_decode", 0.0) * n / 1000, 2),
            "decode_s": round(last.get("avg t_decode", 0.0) * n / 1000, 2),
            "post_decode_s": round(last.get("avg t_post_decode", 0.0) * n / 1000, 2),
        }

    def stop(self) -> None:
        end(self.proc)
        self.log.close()


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds a process spent so far: in all, in its main thread (tid == pid: Streamlit's
    event loop, where edgechat's HTTP and SSE run; llama-server's main loop) and in its busiest
    other threads (named by /proc's comm, which threads inherit unless they set one)."""
    threads: list[tuple[float, str, int]] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads.append(((int(fields[11]) + int(fields[12])) / TICK, name, int(task.name)))
    threads.sort(reverse=True)
    main = sum(cpu for cpu, _, tid in threads if tid == pid)
    return {
        "total": round(sum(cpu for cpu, _, _ in threads), 2),
        "main_thread": round(main, 2),
        "threads": len(threads),
        "busiest": [f"{name}/{tid}: {cpu:.2f}" for cpu, name, tid in threads[:6]],
    }


def cpu_flags() -> dict[str, object]:
    """The box's SIMD flags (/proc/cpuinfo) and model name, to quote beside every figure."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())  # type: ignore[union-attr]
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")
    model = re.search(r"^model name\s*:(.*)$", text, re.M)
    return {"cpu": model.group(1).strip() if model else "?", "flags": [f for f in wanted if f in flags]}
