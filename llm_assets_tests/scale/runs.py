"""Run ``dagster asset materialize`` as users do: its own processes (the multiprocess
executor, one process per step), a ``DAGSTER_HOME`` on SQLite or Postgres."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from llm_assets.accounting.limits import request_estimate
from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.scale.postgres import dagster_yaml

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"


def dagster_home(folder: Path, postgres_url: str | None = None) -> Path:
    """A ``DAGSTER_HOME`` in ``folder`` with its storage in SQLite, or in Postgres."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(dagster_yaml(postgres_url))
    return folder


def dagster_environment(home: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment of a ``dagster`` process on ``home``: this one's, without any
    ``OPENAI_*`` / ``SCALE_*`` it had, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SCALE_"))}
    return environment | {"DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO), **env}


def materialize(
    home: Path, module: str, select: str, env: dict[str, str], *args: str, max_concurrent: int = 4
) -> subprocess.CompletedProcess:
    """``dagster asset materialize -m module --select select`` with the multiprocess
    executor running up to ``max_concurrent`` steps at once."""
    config = {"execution": {"config": {"multiprocess": {"max_concurrent": max_concurrent}}}}
    environment = dagster_environment(home, env)
    command = [str(DAGSTER), "asset", "materialize", "-m", module, "--select", select, *args]
    command += ["--config-json", json.dumps(config)]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


def largest_estimate(server: ScriptedOpenAIServer) -> int:
    """The largest budget estimate of a request the server billed (its JSON as written by
    ``json.dumps``, no shorter than the client's, plus its ``max_tokens``)."""
    return max(request_estimate(json.dumps(body).encode(), body) for _, _, body in server.stats.billed)


def only_run(home: Path) -> tuple[dg.DagsterInstance, dg.DagsterRun]:
    instance = dg.DagsterInstance.from_config(str(home))
    (run,) = instance.get_runs()
    return instance, run


def step_processes(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    """Each step of the run and the process id it ran in (from its STEP_START event)."""
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return {event.step_key: event.dagster_event.pid for event in starts}


def materialization_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey.from_user_string(asset), asset_partitions=partition and [partition]
        ),
        limit=1,
    ).records
    (record,) = records
    return {key: value.value for key, value in record.asset_materialization.metadata.items()}


def set_pool_limit(home: Path, pool: str, limit: int) -> None:
    """``dagster instance concurrency set <pool> <limit>`` on the instance at ``home``."""
    environment = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [str(DAGSTER), "instance", "concurrency", "set", pool, str(limit)]
    subprocess.run(command, env=environment, check=True, capture_output=True, timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str], log: Path, *args: str) -> Iterator[str]:
    """``dagster dev`` in the repository root (``args`` add e.g. ``-m module``) with
    ``home`` as DAGSTER_HOME, its output in ``log``; yields its URL once it answers. It is
    waited for until it serves or exits, on no clock (a busy machine only makes it slower),
    and stopped by process group: SIGINT, then SIGKILL for what is left."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(DAGSTER), "dev", *args, "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=dagster_environment(home, env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"{url}/server_info", timeout=2).close()
                    break
                assert process.poll() is None, f"dagster dev exited:\n{log.read_text(errors='replace')[-6000:]}"
                time.sleep(0.2)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
