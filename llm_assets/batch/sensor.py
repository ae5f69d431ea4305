"""``build_batch_sensor``: re-materialize when submitted batches finish, so a long batch
needs no worker waiting for hours.

Pair it with ``BatchSettings(max_wait_seconds=...)`` short (0: submit and return): the
step submits, fails saying its batch is still running, and this sensor requests the same
materialization again (same run config and partitions) once every batch that run
submitted for the asset is done; the new run re-attaches and collects, paying nothing twice.

Example:
    >>> sensor = build_batch_sensor(minimum_interval_seconds=600)
    >>> sensor.name
    'llm_assets_batches'
"""

import hashlib
from collections import defaultdict
from contextlib import closing

import dagster as dg

from llm_assets.batch.records import Submission, SubmissionStore
from llm_assets.batch.runner import DONE
from llm_assets.session import RunSession

#: Run tags that say which partitions a run materialized.
_PARTITION_TAGS = ("dagster/partition", "dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def build_batch_sensor(
    *,
    name: str = "llm_assets_batches",
    resource_key: str = "openai",
    minimum_interval_seconds: int = 300,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor that watches the batches of batch-mode materializations and requests each
    one again when its batches are done (see the module docstring)."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        target=dg.AssetSelection.all(),
        description="Re-materializes batch-mode assets when the Batch API has finished their batches.",
    )
    def batches(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        session = RunSession(getattr(context.resources, resource_key), context.instance.storage_directory())
        if session.cache is None:
            return dg.SensorResult(skip_reason="The resource has no request cache, so no batches are recorded.")
        groups: dict[tuple[str, str], list[Submission]] = defaultdict(list)
        for record in SubmissionStore(session.cache.root).open():
            groups[(record.run_id, record.asset)].append(record)
        requests = []
        with closing(session.client(None)) as client:
            for (run_id, asset), records in groups.items():
                states = [client.batches.retrieve(r.batch_id).status if r.batch_id else None for r in records]
                context.log.info(f"{asset} (run {run_id}): batches {', '.join(map(str, states))}")
                if all(state in DONE for state in states):
                    requests.append(_request_again(context.instance, run_id, asset, records))
        session.close()
        return dg.SensorResult(run_requests=[r for r in requests if r is not None])

    return batches


def _request_again(
    instance: dg.DagsterInstance, run_id: str, asset: str, records: list[Submission]
) -> dg.RunRequest | None:
    """The materialization of ``asset`` that ``run_id`` made, requested again."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    fingerprints = hashlib.sha256("".join(sorted(r.fingerprint for r in records)).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{run_id}:{asset}:{fingerprints}",
        asset_selection=[dg.AssetKey.from_user_string(asset)],
        run_config=run.run_config,
        tags={tag: run.tags[tag] for tag in _PARTITION_TAGS if tag in run.tags},
    )
