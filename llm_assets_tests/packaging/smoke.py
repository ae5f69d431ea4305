"""The smoke test of one install set, run by the install matrix with the Python of a fresh
venv that holds only that set, from a directory outside the repository (``python -I``):
nothing here may import the checkout or the test suite, only what the set installed.

    python -I smoke.py SET [--postgres-url URL]

Each check prints ``ok <check>`` when it passes; the first failure raises, so the exit
code is not 0 and the traceback says which check and why.
"""

import argparse
import contextlib
import importlib
import importlib.metadata as metadata
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
#: Hang guards for servers that must come up, never timings.
STARTUP_LIMIT = 300
LOCAL_PIP = "pip install 'llm-assets[local]'"


def passed(check: str) -> None:
    print(f"ok {check}", flush=True)


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points at OpenAI or at a checkout."""
    drop = ("OPENAI_", "PYTHONPATH", "DAGSTER_HOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | extra


def installed_files() -> list[Path]:
    return [Path(str(f)) for f in metadata.files("llm-assets")]


def check_installed() -> None:
    """The package comes from this venv's site-packages, with its metadata's version,
    ``py.typed``, the ``llm-assets`` command, and none of the repository's other folders."""
    import llm_assets

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(llm_assets.__file__).resolve().is_relative_to(site), (llm_assets.__file__, site)
    assert llm_assets.__version__ == metadata.version("llm-assets"), llm_assets.__version__
    files = installed_files()
    assert Path("llm_assets/py.typed") in files
    tops = {f.parts[0] for f in files if f.parts[0] != ".."}
    assert tops == {"llm_assets", f"llm_assets-{llm_assets.__version__}.dist-info"}, tops
    assert not [f for f in files if f.suffix in (".png", ".jpg", ".ipynb")], "images or notebooks in the wheel"
    assert (BIN / "llm-assets").is_file()
    passed("installed")


def check_every_module_imports() -> None:
    """Every module of the installed package imports, whatever extras are missing."""
    modules = sorted(
        ".".join(f.with_suffix("").parts).removesuffix(".__init__")
        for f in installed_files()
        if f.parts[0] == "llm_assets" and f.suffix == ".py" and f.stem != "__main__"  # scripts, not modules
    )
    assert len(modules) > 50, modules
    for name in modules:
        importlib.import_module(name)
    passed(f"every module imports ({len(modules)})")


def check_pipeline_on_any_server(home: Path) -> None:
    """The captains pipeline end to end (answers, embeddings, the PCA map) against the
    scripted server the package ships, its usage metadata equal to the server's totals."""
    import dagster as dg

    from llm_assets.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer() as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        from llm_assets.examples import captains

        captains = importlib.reload(captains)  # imported above with no base URL: the local model

        everyone = {
            "dagster/asset_partition_range_start": captains.CAPTAINS[0],
            "dagster/asset_partition_range_end": captains.CAPTAINS[-1],
        }
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            captains.seed_captains(instance)  # the captains are dynamic partitions, of each instance
            for asset, tags in (
                (captains.pipeline.answers, everyone),
                (captains.pipeline.embeddings, everyone),
                (captains.pipeline.plot, {}),
            ):
                result = dg.materialize(
                    list(captains.pipeline),
                    selection=[asset.key],
                    resources=captains.defs.resources,
                    instance=instance,
                    tags=tags,
                )
                assert result.success
            records = instance.fetch_materializations(captains.pipeline.answers.key, limit=100).records
            plot = instance.get_latest_materialization_event(captains.pipeline.plot.key).asset_materialization
        recorded = sum(r.asset_materialization.metadata["openai.total_tokens"].value for r in records)
        billed = server.usage_where(lambda body: "messages" in body).total_tokens
        assert len(records) == len(captains.CAPTAINS) and recorded == billed, (recorded, billed)
        assert Path(plot.metadata["plot_path"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    del os.environ["OPENAI_BASE_URL"]
    passed("the captains pipeline on the scripted server")


def check_local_extra_missing(home: Path) -> None:
    """Without ``[local]``, the embedded model is one clear error at first use: from the
    API, from ``llm-assets serve`` (one line), and in a ``dagster asset materialize`` run."""
    from llm_assets.extras import MissingExtraError
    from llm_assets.local import LocalBackend
    from llm_assets.testing import ScriptedOpenAIServer
    from llm_assets.testing.batches import ScriptedBatchServer

    for start in (lambda: LocalBackend().start(), lambda: ScriptedBatchServer(ScriptedOpenAIServer())):
        try:
            start()
        except MissingExtraError as error:
            assert LOCAL_PIP in str(error) and "'local' extra" in str(error), error
        else:
            raise AssertionError("started without the local extra")
    serve = subprocess.run(
        [str(BIN / "llm-assets"), "serve", "--port", "0"], capture_output=True, text=True, timeout=120
    )
    lines = serve.stderr.strip().splitlines()
    assert serve.returncode == 2 and len(lines) == 1 and LOCAL_PIP in lines[0], serve
    passed("a missing local extra is one clear error")


def check_run_without_local_extra(home: Path) -> None:
    """The issue's journey on the bare set: a run of the example with no key fails with the
    missing extra's error, never a ``ModuleNotFoundError`` from inside the server."""
    run = materialize_kirk(home)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert LOCAL_PIP in output and "ModuleNotFoundError" not in output, output[-3000:]
    passed("a run without the local extra names it")


def materialize_kirk(home: Path) -> subprocess.CompletedProcess:
    """``dagster asset materialize`` of Kirk's answer in the captains example, no key."""
    home.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "llm_assets.examples.captains"]
    command += ["--select", "captains/answers", "--partition", "Kirk"]
    env = environment(DAGSTER_HOME=str(home))
    return subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=STARTUP_LIMIT)


def check_answers_offline_from_the_cli(home: Path) -> None:
    """``[local]``: Kirk's answer materializes offline from the CLI, with no key."""
    run = materialize_kirk(home)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "RUN_SUCCESS" in run.stdout + run.stderr
    passed("the captains answers offline from the CLI")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serves(
    request: str | urllib.request.Request, process: subprocess.Popen, accept=lambda body: True
) -> bytes:
    """The body of the answer to ``request`` once it is a 200 that ``accept`` takes; fails
    if ``process`` exits first."""
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            if response.status == 200 and accept(body):
                return body
        time.sleep(0.5)
    raise AssertionError(f"{request} did not serve within {STARTUP_LIMIT} s")


@contextlib.contextmanager
def running(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """``command`` in its own process group, stopped with the group on exit."""
    with open(cwd / "output.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def check_serve_answers_the_official_client(home: Path) -> None:
    """``[local]``: ``llm-assets serve`` answers the official ``openai`` client for chat,
    embeddings and a batch; a second one on the same port says so in one line."""
    import openai

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with running([str(BIN / "llm-assets"), "serve", "--port", str(port)], home, environment()) as process:
        wait_until_serves(f"http://127.0.0.1:{port}/v1/models", process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0)
        chat = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]
        )
        assert chat.choices[0].message.content.strip() and chat.usage.completion_tokens > 0
        embedded = client.embeddings.create(model="text-embedding-3-small", input=["a starship", "a captain"])
        assert [len(e.embedding) for e in embedded.data] == [384, 384]
        lines = [
            {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": q}]}}
            for i, q in enumerate(["Name a star.", "Name a planet."])
        ]  # fmt: skip
        upload = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + STARTUP_LIMIT
        while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in output) == ["q0", "q1"]
        assert all(o["response"]["status_code"] == 200 for o in output), output
        busy = subprocess.run(
            [str(BIN / "llm-assets"), "serve", "--port", str(port)], capture_output=True, text=True, timeout=120
        )
        lines = busy.stderr.strip().splitlines()
        assert busy.returncode != 0 and len(lines) == 1 and f":{port}" in lines[0] and "--port" in lines[0], busy
    passed("llm-assets serve answers chat, embeddings and a batch")


def check_postgres(home: Path, postgres_url: str | None) -> None:
    """``[postgres]``: dagster-postgres imports; with a server, a run on a Postgres-backed
    instance keeps its token budget in that database."""
    import dagster_postgres  # noqa: F401
    import psycopg2  # noqa: F401

    if postgres_url is None:
        passed("dagster-postgres imports (no PostgreSQL server: the run on it was skipped)")
        return
    import dagster as dg
    import sqlalchemy as sa

    from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_chat_answers_asset
    from llm_assets.testing import ScriptedOpenAIServer

    home.mkdir(parents=True, exist_ok=True)
    storage = f'storage:\n  postgres:\n    postgres_url: "{postgres_url}"\n'
    (home / "dagster.yaml").write_text(f"{storage}telemetry:\n  enabled: false\n")
    answers = build_chat_answers_asset(
        key="answers", partitions_def=dg.StaticPartitionsDefinition(["Kirk"]), prompt="Hello, {partition_key}."
    )
    with ScriptedOpenAIServer() as server, dg.DagsterInstance.from_config(str(home)) as instance:
        resource = OpenAIResource(api_key="sk-test", base_url=server.base_url, max_tokens_per_run=10_000)
        result = dg.materialize(
            [answers],
            resources={"openai": resource, "io_manager": PartitionedFilesystemIOManager(base_dir=str(home / "io"))},
            instance=instance,
            partition_key="Kirk",
        )
        assert result.success and server.usage.calls == 1
    with sa.create_engine(postgres_url).connect() as conn:
        assert sa.inspect(conn).has_table("llm_assets_budget")
    passed("a budgeted run on a Postgres-backed instance")


def check_dagster_dev_serves(home: Path) -> None:
    """``[ui]``: ``dagster dev`` on the example serves the UI with its three assets."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(BIN / "dagster"), "dev", "-m", "llm_assets.examples.captains"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with running(command, home, environment(DAGSTER_HOME=str(home))) as process:
        query = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql",
            data=json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = wait_until_serves(query, process, accept=lambda body: b"answer_map" in body)
        paths = {"/".join(n["assetKey"]["path"]) for n in json.loads(body)["data"]["assetNodes"]}
        assert paths == {"captains/answers", "captains/embeddings", "captains/answer_map", "captains/most_like"}, paths
    passed("dagster dev serves the example")


def check_dg_lists_the_component(home: Path) -> None:
    """``[ui]``: ``dg list components`` shows the YAML component."""
    home.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "dg"), "list", "components", "--json"]
    listed = subprocess.run(command, cwd=home, env=environment(), capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "llm_assets.components.LLMPipelineComponent" in listed.stdout, listed.stdout[-2000:]
    passed("dg list components shows LLMPipelineComponent")


def plan(install_set: str, postgres_url: str | None) -> list[tuple[str, Callable[[Path], None]]]:
    """The checks of ``install_set``, each with the name of its working folder."""
    checks: list[tuple[str, Callable[[Path], None]]] = [
        ("installed", lambda _: check_installed()),
        ("modules", lambda _: check_every_module_imports()),
        ("pipeline", check_pipeline_on_any_server),
    ]
    if install_set == "local":
        checks += [("cli", check_answers_offline_from_the_cli), ("serve", check_serve_answers_the_official_client)]
    else:
        checks += [("no-local", check_local_extra_missing)]
    if install_set == "bare":
        checks += [("run", check_run_without_local_extra)]
    if install_set == "postgres":
        checks += [("postgres", lambda home: check_postgres(home, postgres_url))]
    if install_set == "ui":
        checks += [("dev", check_dagster_dev_serves), ("dg", check_dg_lists_the_component)]
    return checks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("set", choices=["bare", "local", "postgres", "ui"])
    parser.add_argument("--postgres-url", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"llm-assets-smoke-{args.set}-"))
    checks = plan(args.set, args.postgres_url)
    for folder, check in checks:
        (work / folder).mkdir()
        check(work / folder)
    print(f"all {len(checks)} checks passed", flush=True)


if __name__ == "__main__":
    main()
