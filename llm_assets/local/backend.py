"""Start and stop the embedded local server as a child process, safely.

The parent binds a loopback socket (port 0 = a free port the kernel picks, so concurrent
runs never collide) and hands it to the child, waits a bounded time until the server
answers, and terminates it on exit. On Linux the child also gets ``SIGTERM`` if its
parent dies, so even a ``SIGKILL``-ed run leaves no server behind.

Examples:
    >>> with LocalBackend() as backend:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=backend.base_url, api_key="no-key-needed")
"""

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from pathlib import Path

from llm_assets.errors import ConfigurationError
from llm_assets.local.server import INSTALL_HINT, chat_model_path, require_local

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen, grace: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


class LocalBackend:
    """The embedded OpenAI-compatible server (SmolLM2 chat + multilingual-e5 embeddings)
    in a child process on 127.0.0.1.

    Args:
        port: port to listen on; 0 (default) picks a free one.
        threads: CPU threads for the models (default: all cores).
        ready_timeout: seconds to wait for the server to answer before giving up.
    """

    def __init__(self, *, port: int = 0, threads: int | None = None, ready_timeout: float = 60.0) -> None:
        self.port = port
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def base_url(self) -> str:
        if self.process is None:
            raise ConfigurationError("The local backend is not running: call start() or use it as a context manager.")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path | None:
        return Path(self._workdir.name) / "server.log" if self._workdir else None

    def start(self) -> "LocalBackend":
        require_local()
        chat_model_path()  # fail here, clearly, if the model file is missing
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as error:
            sock.close()
            raise ConfigurationError(
                f"Port {self.port} on 127.0.0.1 is in use ({error.strerror}): choose another port, or 0 "
                "to let the system pick a free one."
            ) from None
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._workdir = tempfile.TemporaryDirectory(prefix="llm_assets_local_")
        command = self._command(sock.fileno())
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                pass_fds=(sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the parent, which stops us
                preexec_fn=_die_with_parent if in_main_thread and sys.platform == "linux" else None,
            )
        sock.close()  # the child holds the listening socket now
        self._finalizer = weakref.finalize(self, _stop, self.process, 5.0)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, fd: int) -> list[str]:
        command = [sys.executable, "-m", "llm_assets.local.server", "--fd", str(fd)]
        return [*command, "--threads", str(self.threads)] if self.threads else command

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while True:
            if self.process.poll() is not None:
                raise ConfigurationError(
                    f"The local model server exited with code {self.process.returncode} while starting:\n"
                    f"{self._log_tail()}\nFix the cause above, or {INSTALL_HINT}."
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"The local model server did not answer within {self.ready_timeout:g} s "
                    f"(log: {self._log_tail()!r}): raise ready_timeout if the machine is busy."
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and remove its files."""
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "LocalBackend":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
