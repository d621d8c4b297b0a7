"""Background work yields the CPU to the card path (decisions 0033 and 0047).

The event consumers and, when PostgreSQL runs on this host, their database backends run under
Linux's SCHED_IDLE: a card path process that wakes up takes the CPU from them at once, instead of
waiting out their time slice (a few milliseconds under the EEVDF scheduler, whatever their nice
value), and they run on whatever CPU the card path leaves. Where the OS has no SCHED_IDLE they get
the lowest nice value instead.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from shared.config import to_libpq

log = logging.getLogger("shared.priority")

FALLBACK_NICE = 19
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "")


def server_is_local(url: str) -> bool:
    """Whether the database server runs on this host (a loopback address or a Unix socket), so
    that its backend process ids are this host's to reprioritise."""
    return (urlsplit(to_libpq(url)).hostname or "") in _LOOPBACK


def yield_cpu(pid: int = 0) -> None:
    """Make process `pid` (0: this one) background work, every thread it has now and every one it
    starts later. Best effort: a process another user owns refuses, is logged at debug and keeps
    its priority."""
    for tid in _threads(pid or os.getpid()):
        try:
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, FALLBACK_NICE)
        except (PermissionError, ProcessLookupError) as exc:
            log.debug("process %s keeps its priority: %s", tid, exc)


def is_background(pid: int) -> bool:
    if hasattr(os, "SCHED_IDLE"):
        return os.sched_getscheduler(pid) == os.SCHED_IDLE
    return os.getpriority(os.PRIO_PROCESS, pid) >= FALLBACK_NICE


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # no /proc: the process as a whole
        return [pid]
