"""CPU time of a server's processes, read from /proc (for benchmarks on a shared machine)."""

from __future__ import annotations

import os
from pathlib import Path


def group_cpu(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
