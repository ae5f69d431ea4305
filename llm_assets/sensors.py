"""``build_batch_sensor``: re-materialize when submitted batches finish, so a long batch
needs no worker waiting for hours.

Pair it with ``BatchSettings(max_wait_seconds=...)`` short (0: submit and return): the
step submits, fails saying its batch is still running, and this sensor requests the same
materialization again (same run config and partitions) once every batch that run
submitted for the asset is done; the new run re-attaches and collects, paying nothing twice.

Examples:
    >>> sensor = build_batch_sensor(minimum_interval_seconds=600)
    >>> sensor.name
    'llm_assets_batches'
"""

import hashlib
from collections import defaultdict
from contextlib import closing

import dagster as dg
import openai

from llm_assets.batch.records import Submission, SubmissionStore
from llm_assets.batch.submit import DONE
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
        resource = getattr(context.resources, resource_key)
        session = RunSession(resource.session_settings(), context.instance.storage_directory())
        if session.cache is None:
            return dg.SensorResult(skip_reason="The resource has no request cache, so no batches are recorded.")
        store = SubmissionStore(session.cache.root)
        groups: dict[tuple[str, str], list[Submission]] = defaultdict(list)
        for record in store.open():
            groups[(record.run_id, record.asset)].append(record)
        requests, notes = [], []
        try:
            with closing(session.client(None)) as client:
                for (run_id, asset), records in groups.items():
                    try:
                        request, note = _watch(context, client, store, run_id, asset, records)
                    except openai.OpenAIError as error:  # one server error must not stop the others
                        request, note = None, f"{asset} (run {run_id}): {type(error).__name__}: {error}"
                    requests += [request] if request else []
                    notes += [note] if note else []
        finally:
            session.close()
        for note in notes:
            context.log.info(note)
        skip = "; ".join(notes)[:1000] or "no recorded batches" if not requests else None
        return dg.SensorResult(run_requests=requests, skip_reason=skip)

    return batches


def _watch(
    context: dg.SensorEvaluationContext,
    client: openai.OpenAI,
    store: SubmissionStore,
    run_id: str,
    asset: str,
    records: list[Submission],
) -> tuple[dg.RunRequest | None, str | None]:
    """The run request that collects one run's batches of ``asset`` once they are all done
    (a batch the server no longer has counts as done: the re-run submits its requests
    again), or why there is none yet."""
    where = f"{asset} (run {run_id})"
    if any(record.cancel_requested for record in records):
        return None, f"{where}: the run was terminated and cancelled its batches; not re-run"
    run = context.instance.get_run_by_id(run_id)
    if run is None:
        partitions = sorted({pk for record in records for pk in record.partitions})
        return None, (
            f"{where}: the run is not in this instance; re-materialize {asset} for {partitions[:5]} with its run "
            "config to collect its batches"
        )
    if run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING):
        return None, f"{where}: the run was terminated; not re-run"
    states = [getattr(store.find_batch(client, record), "status", "gone") for record in records]
    if not all(state in (*DONE, "gone") for state in states):
        return None, f"{where}: batches {', '.join(states)}"
    return _request_again(run, asset, records), None


def _request_again(run: dg.DagsterRun, asset: str, records: list[Submission]) -> dg.RunRequest:
    """The materialization of ``asset`` that ``run`` made, requested again."""
    fingerprints = hashlib.sha256("".join(sorted(r.fingerprint for r in records)).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{run.run_id}:{asset}:{fingerprints}",
        asset_selection=[dg.AssetKey.from_user_string(asset)],
        run_config=run.run_config,
        tags={tag: run.tags[tag] for tag in _PARTITION_TAGS if tag in run.tags},
    )
