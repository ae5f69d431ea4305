"""Who holds a share of a run's budget: a process, named so that others can tell whether
it still runs.

A holder is ``<host>:<pid>:<start>:<nonce>``: the host is the machine's name and, on
Linux, its boot id and PID namespace (two machines, or two containers, sharing a hostname
are different hosts); ``start`` is when the process started (so a PID reused by another
process is not mistaken for it).

Examples:
    >>> me = Holder.current()
    >>> Holder.parse(me.name) == me, me.alive(me)
    (True, True)
"""

import os
import socket
import uuid
from dataclasses import dataclass


def _machine() -> str:
    """This boot of this machine, and this PID namespace in it (Linux; else "")."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()[:8]}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), ``None`` if it is
    gone or a zombie; ``""`` where that can't be read (then only ``kill(pid, 0)`` tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return None if fields[0] == b"Z" else fields[19].decode()


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start: str
    nonce: str

    @classmethod
    def current(cls) -> "Holder":
        """This process (a new nonce each time: one holder per budget)."""
        machine = _machine()
        host = socket.gethostname().replace(":", "_") + (f"/{machine}" if machine else "")
        return cls(host, os.getpid(), process_start(os.getpid()) or "", uuid.uuid4().hex[:8])

    @classmethod
    def parse(cls, name: str) -> "Holder":
        host, pid, start, nonce = name.rsplit(":", 3)
        return cls(host, int(pid), start, nonce)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}:{self.nonce}"

    def alive(self, observer: "Holder") -> bool | None:
        """Whether this holder's process still runs, as ``observer`` (on its host) can
        tell; ``None`` from another host, where only the row's age tells."""
        if self.host != observer.host:
            return None
        start = process_start(self.pid)
        return start is not None and (not start or not self.start or start == self.start)
