"""CPU time of a server's processes, read from /proc (for benchmarks on a shared machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _group_stats(pgid: int) -> Iterator[tuple[str, list[str]]]:
    """(pid, /proc stat fields after the command name) of each live process in a group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that has ended
        if int(fields[2]) == pgid:
            yield entry, fields


def group_cpu(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(fields[11]) + int(fields[12])) / tick for _, fields in _group_stats(pgid))


def _group_threads(pgid: int) -> list[int]:
    """Every thread of every live process in a process group."""
    threads = []
    for pid, _ in _group_stats(pgid):
        try:
            threads += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
    return threads


@contextmanager
def apart_from(pgid: int) -> Iterator[None]:
    """Run the calling thread on one core and a server's process group on the other.

    So that an in-process measurement counts this process's own work, not the time it loses
    to the server running on the same core (the machine has two). Undone on exit.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield
        return
    mine, theirs = {cores[0]}, {cores[-1]}
    threads = _group_threads(pgid)
    for thread in threads:
        try:
            os.sched_setaffinity(thread, theirs)
        except OSError:
            pass  # a thread that has ended
    os.sched_setaffinity(0, mine)
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(cores))
        for thread in threads:
            try:
                os.sched_setaffinity(thread, set(cores))
            except OSError:
                pass
