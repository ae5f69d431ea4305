"""The captains pipeline deployed as on a cluster: Dagster's Celery executor, every piece of
state on an S3-compatible store (the I/O manager, the request cache and batch records, the
LanceDB table, the map's PNG) or in the instance's Postgres (the run budget).

The tests configure it by environment, as a deployment would:
- ``CLUSTER_BROKER``: the Celery broker and result backend (Redis);
- ``CLUSTER_STORE``: the ``s3://`` root of every stored thing; the ``AWS_*`` variables
  reach the store (``AWS_ENDPOINT_URL`` for a MinIO- or moto-style endpoint);
- ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``: the server and key;
- ``CLUSTER_ROUTED=1``: answers, embeddings and the map each on its own Celery queue (so
  each on its own worker); else every step on the ``dagster`` queue;
- ``CLUSTER_MODE``: ``live`` or ``batch``; ``CLUSTER_ROWS``: questions per captain (the
  prompt asks each captain ``CLUSTER_ROWS`` numbered questions); ``CLUSTER_BUDGET``:
  ``max_tokens_per_run``; ``CLUSTER_CONCURRENCY``: requests in flight per step;
  ``CLUSTER_VISIBILITY_TIMEOUT``: the broker's (see :mod:`.workers`).
"""

import os

import dagster as dg
import pandas as pd
from dagster_celery import celery_executor

from llm_assets import (
    LanceDBIOManager,
    OpenAIResource,
    PartitionedFilesystemIOManager,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_pca_plot_asset,
)
from llm_assets.batch import BatchSettings
from llm_assets_tests.cluster.workers import VISIBILITY_TIMEOUT, celery_settings

CAPTAINS = ["Kirk", "Picard", "Sisko", "Janeway", "Archer", "Pike", "Burnham"]
STORE = os.environ.get("CLUSTER_STORE", "s3://llm-assets/cluster")
ROWS = int(os.environ.get("CLUSTER_ROWS", "1"))
ROUTED = os.environ.get("CLUSTER_ROUTED") == "1"

captains = dg.StaticPartitionsDefinition(CAPTAINS)


def celery_from_env() -> dg.ExecutorDefinition:
    """Dagster's Celery executor on the broker ``CLUSTER_BROKER`` names, with the workers'
    settings (a step is acknowledged when it ends: a lost worker's step runs elsewhere)."""
    broker = os.environ.get("CLUSTER_BROKER", "redis://127.0.0.1:6379/0")
    timeout = int(os.environ.get("CLUSTER_VISIBILITY_TIMEOUT", VISIBILITY_TIMEOUT))
    settings = celery_settings(broker, timeout)
    settings = {k: v for k, v in settings.items() if k not in ("broker_url", "result_backend")}
    return celery_executor.configured({"broker": broker, "backend": broker, "config_source": settings})


def queue(name: str) -> dict[str, str]:
    """The op tags that send a step to Celery queue ``name`` (when routed)."""
    return {"dagster-celery/queue": name} if ROUTED else {}


@dg.asset(
    partitions_def=captains,
    backfill_policy=dg.BackfillPolicy.single_run(),
    key_prefix="captains",
    op_tags=queue("answers"),
)
def questions(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """``ROWS`` questions for each captain of the run."""
    rows = [
        {"partition_key": captain, "row": n, "question": f"Question {n}: what makes a good starship captain?"}
        for captain in context.partition_keys
        for n in range(ROWS)
    ]
    return pd.DataFrame(rows)


answers = build_chat_answers_asset(
    key="answers",
    key_prefix="captains",
    upstream=questions,
    text_column="question",
    partitions_def=captains,
    system_prompt="You are Captain {partition_key} of Star Trek. Stay in character.",
    prompt="{text} Answer in at most three sentences.",
    max_tokens=64,
    mode=os.environ.get("CLUSTER_MODE", "live"),
    op_tags=queue("answers"),
)
embeddings = build_embeddings_asset(
    key="embeddings",
    key_prefix="captains",
    upstream=answers,
    partitions_def=captains,
    io_manager_key="vector_store",
    op_tags=queue("embeddings"),
)
answer_map = build_pca_plot_asset(
    key="answer_map",
    key_prefix="captains",
    upstream=embeddings,
    plot_dir=f"{STORE}/plots",
    op_tags=queue("map"),
)

budget = int(os.environ["CLUSTER_BUDGET"]) if os.environ.get("CLUSTER_BUDGET") else None

defs = dg.Definitions(
    assets=[questions, answers, embeddings, answer_map],
    resources={
        "openai": OpenAIResource(
            api_key=dg.EnvVar("OPENAI_API_KEY"),
            base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),  # set by the tests
            cache_dir=f"{STORE}/cache",  # the answers, and the batch records next to them
            max_tokens_per_run=budget,
            max_concurrency=int(os.environ.get("CLUSTER_CONCURRENCY", "8")),
            batch=BatchSettings(poll_seconds=0.05, max_poll_seconds=0.2),
        ),
        "io_manager": PartitionedFilesystemIOManager(base_dir=f"{STORE}/assets"),
        "vector_store": LanceDBIOManager(uri=f"{STORE}/lancedb"),
    },
    executor=celery_from_env(),
)
