"""Dagster's Celery executor on loopback: workers that share nothing but the network.

Each :class:`Worker` is ``celery -A dagster_celery.app worker`` in a folder of its own, with
its own working directory, ``HOME``, ``TMPDIR`` and ``DAGSTER_HOME``, and its Celery settings
in a ``dagster_celery_config`` module there (as ``dagster-celery worker start -y`` writes one).
It reaches the run launcher, Postgres, Redis and the S3 store only over loopback.

The settings are the ones the deployment guide gives for Celery: a task is acknowledged when
it ends (``task_acks_late``), so a step whose worker dies is delivered to another one once
the broker's ``visibility_timeout`` passes, and each worker takes one step at a time. Redis
also delivers again a step still running past that timeout (measured: a 150-second step
under a 45-second timeout ran twice), so it must be longer than any step: the kill tests,
whose steps take seconds, use :data:`KILL_VISIBILITY_TIMEOUT` to see the redelivery soon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Seconds after which Redis gives an unacknowledged step to another worker: longer than any
#: step takes, so a step that is running is never delivered twice.
VISIBILITY_TIMEOUT = 3600
#: The kill tests' timeout: their steps take seconds, and a killed worker's step is
#: delivered again that long after it began.
KILL_VISIBILITY_TIMEOUT = 30


def celery_settings(broker: str, visibility_timeout: int = VISIBILITY_TIMEOUT) -> dict:
    """The Celery settings of the workers, and of the executor that sends them steps."""
    return {
        "broker_url": broker,
        "result_backend": broker,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": visibility_timeout},
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
    }


def scrubbed_environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without what the tests set per process, plus ``env``."""
    drop = ("OPENAI_", "AWS_", "DAGSTER_", "LLM_ASSETS_", "CLUSTER_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("HOME", "TMPDIR")}
    return base | env


class Worker:
    """One Celery worker process (``concurrency`` steps at once), in ``folder``."""

    def __init__(
        self,
        folder: Path,
        name: str,
        broker: str,
        env: dict[str, str],
        *,
        queue: str = "dagster",
        dagster_yaml: str = "",
        concurrency: int = 1,
        visibility_timeout: int = VISIBILITY_TIMEOUT,
    ) -> None:
        pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the dev group has it)")
        self.name, self.folder = name, folder
        self.home, self.tmp, self.cwd, self.dagster_home = (folder / d for d in ("home", "tmp", "cwd", "dagster"))
        for directory in (self.home, self.tmp, self.cwd, self.dagster_home):
            directory.mkdir(parents=True, exist_ok=True)
        settings = "\n".join(f"{key} = {value!r}" for key, value in celery_settings(broker, visibility_timeout).items())
        (self.cwd / "dagster_celery_config.py").write_text(settings + "\n")
        (self.dagster_home / "dagster.yaml").write_text(dagster_yaml)
        self.log = folder / "worker.log"
        environment = scrubbed_environment(env) | {
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "DAGSTER_HOME": str(self.dagster_home),
            "PYTHONPATH": os.pathsep.join([str(self.cwd), str(REPO)]),  # the code, as in the image
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        command = [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "-n", f"{name}@%h"]
        command += ["--concurrency", str(concurrency), "-Q", queue, "--loglevel", "INFO"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> None:
        """Until the worker consumes its queue (no clock: a busy machine only makes it slower)."""
        while " ready." not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, f"worker {self.name} exited:\n{self.tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and its pool's processes: a machine lost mid-step."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def scratch_files(self) -> list[str]:
        """Every file the worker left in its own directories (its config module aside)."""
        found = []
        for directory in (self.home, self.tmp, self.cwd, self.dagster_home):
            for path in directory.rglob("*"):
                if path.is_file() and path.name not in ("dagster_celery_config.py", "dagster.yaml"):
                    found.append(str(path.relative_to(self.folder)))
        return sorted(found)


class Workers(list):
    """Workers started together, stopped together."""

    def __init__(
        self,
        folder: Path,
        count: int,
        broker: str,
        env: dict[str, str],
        *,
        first: int = 1,
        queues: list[str] | None = None,
        dagster_yaml: str = "",
        visibility_timeout: int = VISIBILITY_TIMEOUT,
    ) -> None:
        queues = queues or ["dagster"] * count
        super().__init__(
            Worker(
                folder / f"w{n}",
                f"w{n}",
                broker,
                env,
                queue=q,
                dagster_yaml=dagster_yaml,
                visibility_timeout=visibility_timeout,
            )
            for n, q in zip(range(first, first + count), queues, strict=True)
        )
        for worker in self:
            worker.wait_ready()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self:
            worker.stop()
