"""A throwaway Redis server (Celery's broker and result backend in the cluster tests).

``running_redis()`` starts Debian's ``redis-server`` on a free loopback port, in a temporary
directory, with no persistence, and yields its URL; it skips the test when the server is
not installed (``scripts/setup`` installs it with apt, as root) and always stops it.
"""

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "install it with `apt-get install redis-server` (scripts/setup does, as root)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    """A fresh Redis for the duration of the block; yields ``redis://127.0.0.1:<port>/0``."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"redis-server is not installed: {INSTALL_HINT}")
    root = Path(tempfile.mkdtemp(prefix="llm-assets-redis-"))
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root), "--save", ""]
    command += ["--appendonly", "no", "--protected-mode", "yes", "--logfile", str(root / "redis.log")]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not _answers(port):  # waits on no clock: a busy machine only makes it slower
            if process.poll() is not None:
                log = (root / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited ({process.returncode}):\n{log}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(root, ignore_errors=True)
