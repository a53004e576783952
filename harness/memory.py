"""Memory of a process as the kernel counts it (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def proc_status_mib(field: str, pid: int | str = "self") -> float:
    """A memory line of /proc/PID/status (VmRSS now, VmHWM the peak) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mib(pid: int | str = "self") -> float:
    return proc_status_mib("VmRSS", pid)


def peak_rss_mib() -> float:
    return proc_status_mib("VmHWM")
