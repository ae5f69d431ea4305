"""A cluster on loopback for one test: Postgres (the instance), Redis (Celery), an S3 store,
Celery workers, and ``dagster`` runs launched from a folder of their own.

:class:`Cluster` holds the services and starts workers and runs; every process it starts has
its own ``HOME``, ``TMPDIR``, working directory and ``DAGSTER_HOME`` (the same
``dagster.yaml``: runs and events in Postgres, compute logs off), and shares nothing but
loopback with the others.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import dagster as dg

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.cluster.s3 import S3
from llm_assets_tests.cluster.workers import REPO, VISIBILITY_TIMEOUT, Worker, Workers, scrubbed_environment
from llm_assets_tests.scale.postgres import create_database

DAGSTER = Path(sys.executable).parent / "dagster"
MODULE = "llm_assets_tests.cluster.pipeline"
CAPTAINS = "Kirk...Burnham"  # every captain: one run of each single-run asset
STEPS = "captains/questions,captains/answers"


def fresh_database(postgres_url: str) -> str:
    """A new, empty database on the server of ``postgres_url``; its URL."""
    return create_database(postgres_url, f"cluster_{uuid.uuid4().hex[:12]}")


def dagster_yaml(postgres_url: str, storage: Path) -> str:
    """Runs, events and schedules in Postgres; no compute logs (a cluster keeps them in
    S3 with dagster-aws's S3ComputeLogManager); the local artifact storage in ``storage``,
    which the tests check nothing of the library's lands in."""
    return (
        f'storage:\n  postgres:\n    postgres_url: "{postgres_url}"\n'
        "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n"
        "  class: NoOpComputeLogManager\n"
        f"local_artifact_storage:\n  module: dagster._core.storage.root\n  class: LocalArtifactStorage\n"
        f'  config:\n    base_dir: "{storage}"\n'
        "telemetry:\n  enabled: false\n"
    )


@dataclass
class Cluster:
    folder: Path
    postgres_url: str
    broker: str
    s3: S3
    server: ScriptedOpenAIServer
    env: dict[str, str] = field(default_factory=dict)
    visibility_timeout: int = VISIBILITY_TIMEOUT
    started: list[Worker] = field(default_factory=list)
    launches: int = 0

    def __post_init__(self) -> None:
        self.root = f"cluster-{uuid.uuid4().hex[:8]}"
        self.launcher_home = self.folder / "launcher"  # the launchers' DAGSTER_HOME
        self.launcher_storage = self.launcher_home / "storage"
        self.dagster_yaml = dagster_yaml(self.postgres_url, self.launcher_storage)
        self.launcher_home.mkdir(parents=True, exist_ok=True)
        (self.launcher_home / "dagster.yaml").write_text(self.dagster_yaml)

    @property
    def store(self) -> str:
        return self.s3.uri(self.root)

    def environment(self) -> dict[str, str]:
        """What every process of the deployment gets (the same image, the same settings)."""
        return {
            **self.s3.env,
            "OPENAI_BASE_URL": self.server.base_url,
            "OPENAI_API_KEY": "sk-cluster-test-key",
            "CLUSTER_BROKER": self.broker,
            "CLUSTER_STORE": self.store,
            "CLUSTER_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            **self.env,
        }

    def workers(self, count: int, *, queues: list[str] | None = None) -> Workers:
        """``count`` new workers (``queues``: one queue each, else all on ``dagster``)."""
        first = len(self.started) + 1
        workers = Workers(
            self.folder,
            count,
            self.broker,
            self.environment(),
            first=first,
            queues=queues,
            dagster_yaml=self.dagster_yaml,
            visibility_timeout=self.visibility_timeout,
        )
        self.started.extend(workers)
        return workers

    def launch(self, select: str, *, partitions: str | None = CAPTAINS, module: str = MODULE, wait: bool = True):
        """``dagster asset materialize`` of ``select`` from a launcher folder of its own: the
        finished process, or the running one (``wait=False``)."""
        self.launches += 1
        folder = self.folder / f"launcher{self.launches}"
        home, tmp, cwd = folder / "home", folder / "tmp", folder / "cwd"
        for directory in (home, tmp, cwd):
            directory.mkdir(parents=True, exist_ok=True)
        env = scrubbed_environment(self.environment()) | {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "DAGSTER_HOME": str(self.launcher_home),
            "PYTHONPATH": str(REPO),
        }
        command = [str(DAGSTER), "asset", "materialize", "-m", module, "--select", select]
        if partitions:
            command += ["--partition-range", partitions]
        with open(folder / "launcher.log", "wb") as log:  # the process keeps its own descriptor
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        process.log_path = folder / "launcher.log"  # type: ignore[attr-defined]
        if wait:
            process.wait(900)
        return process

    def output(self, process) -> str:
        return Path(process.log_path).read_text(errors="replace")

    def running_step(self, step: str, process: subprocess.Popen) -> str:
        """The worker running ``step`` of the launched run, once one has started it."""
        while True:
            found = [step_workers(self.instance, run.run_id).get(step) for run in runs(self.instance)]
            if any(found):
                return next(worker for worker in found if worker)
            assert process.poll() is None, self.output(process)[-5000:]
            time.sleep(0.1)

    def wait(self, condition, process: subprocess.Popen) -> None:
        """Until ``condition`` holds (a fact about the servers, on no clock), while the run goes on."""
        while not condition():
            assert process.poll() is None, self.output(process)[-5000:]
            time.sleep(0.05)

    @cached_property
    def instance(self) -> dg.DagsterInstance:
        """The launcher's instance (Postgres): its runs and events."""
        return dg.DagsterInstance.from_config(str(self.launcher_home))


def step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Each step of the run and the Celery worker that ran it (the worker's engine event)."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Celery worker" in metadata and record.step_key:
            found[record.step_key] = metadata["Celery worker"].value.split("@")[0]
    return found


def runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs()))  # oldest first
