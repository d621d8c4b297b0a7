"""Free TCP ports on loopback for the processes a bank of our own runs: its services, PostgreSQL, the
Kafka broker, S3Proxy, the fake push provider, and the servers tests and benchmarks start.

One definition for all of them (tests, bench/, bank/cluster.py, bank/supervisor.py, bank/infra/*): the
walk below is per process, so two callers in one process never get the same port.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, below the kernel's ephemeral range: a port
    from that range (what binding port 0 gives) can be taken as the source port of any outgoing
    connection while its server is down for a restart, and the restart then fails to bind.

    Ports are handed out by walking the range from a random start, so one process never gets the
    same port twice: callers often take several before binding any (a bank's services and its
    database), and free-right-now alone let two of them get one port (CI: PostgreSQL and
    transactions both given 27398)."""
    low = _ephemeral_low()
    first = max(1024, low - 12000)
    span = low - first
    with _PORT_LOCK:
        for _ in range(span):
            port = first + next(_port_walk) % span
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


_PORT_LOCK = threading.Lock()
_port_walk = itertools.count(random.randrange(1 << 16))


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something on 127.0.0.1 accepts connections on `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
