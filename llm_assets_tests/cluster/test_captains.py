"""The captains pipeline on Celery workers that share no disk: answers, embeddings and the
map each on another worker, everything stored on S3, and a re-run on new workers (nothing
left of the first ones) sends no request."""

from llm_assets_tests.cluster.cluster import runs, step_workers
from llm_assets_tests.scale.runs import materialization_metadata

PARTITIONED = "captains/questions,captains/answers,captains/embeddings"


def test_the_captains_run_on_three_workers_and_a_rerun_on_new_ones_sends_nothing(cluster):
    cluster.env["CLUSTER_ROUTED"] = "1"
    with cluster.workers(3, queues=["answers", "embeddings", "map"]):
        first = cluster.launch(PARTITIONED)
        assert first.returncode == 0, cluster.output(first)[-5000:]
        plotted = cluster.launch("captains/answer_map", partitions=None)
        assert plotted.returncode == 0, cluster.output(plotted)[-5000:]
    stats = cluster.server.stats
    billed = len(stats.requests)
    instance = cluster.instance
    workers = {}
    for run in runs(instance):
        workers |= step_workers(instance, run.run_id)
    assert workers["captains__answers"] != workers["captains__embeddings"] != workers["captains__answer_map"]
    print("steps and their workers:", workers)
    assert stats.paths["/v1/chat/completions"] == 7 and stats.paths["/v1/embeddings"] >= 1  # an answer per captain

    # the values, read back from S3 where other workers stored them

    answers = cluster.s3.read_frame(f"{cluster.store}/assets/captains/answers/Kirk")
    assert len(answers) == 1 and answers["answer"].iloc[0]
    plot = materialization_metadata(instance, "captains/answer_map")
    assert plot["points"] == 7 and str(plot["plot_path"]).startswith(f"{cluster.store}/plots/")
    assert cluster.s3.path(str(plot["plot_path"])).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # new workers, nothing of the old ones: every answer comes from the cache on S3
    with cluster.workers(3, queues=["answers", "embeddings", "map"]):
        again = cluster.launch(PARTITIONED)
        assert again.returncode == 0, cluster.output(again)[-5000:]
    assert len(stats.requests) == billed, "the re-run sent requests: its cache is not on S3"


#: What a worker may leave in its own directories: caches that only speed up its next step.
SCRATCH = ("home/.cache/matplotlib/",)


def test_nothing_a_step_needs_is_left_on_a_workers_disk(cluster):
    """Every path the library writes in a run (batch mode, a run budget, the map), found:
    each on the S3 store or in Postgres, or scratch of the worker's that nothing reads later."""
    cluster.env.update(CLUSTER_MODE="batch", CLUSTER_BUDGET="100000")
    from llm_assets.testing.batches import ScriptedBatchServer

    with ScriptedBatchServer(cluster.server) as batches:
        cluster.env["OPENAI_BASE_URL"] = batches.base_url
        with cluster.workers(2) as workers:
            assert cluster.launch(PARTITIONED).returncode == 0
            assert cluster.launch("captains/answer_map", partitions=None).returncode == 0
    left = {worker.name: worker.scratch_files() for worker in workers}
    print("left on the workers' disks:", left)
    for name, files in left.items():
        needed = [f for f in files if not f.startswith(SCRATCH)]
        assert not needed, f"worker {name} keeps files a later step may need: {needed}"
    launcher = sorted(str(p) for p in cluster.launcher_storage.rglob("*") if p.is_file())
    assert not launcher, f"steps wrote to the instance's local storage directory: {launcher}"

    kinds = {}
    for key in cluster.s3.keys(cluster.root):
        kind = key.split("/")[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    print("on S3:", kinds)  # the batch records were there too, until their batch was collected
    assert {"assets", "cache", "lancedb", "plots"} <= set(kinds), kinds
    assert batches.creates == 1

    import sqlalchemy as sa

    with sa.create_engine(cluster.postgres_url).connect() as connection:
        budgets = connection.exec_driver_sql("SELECT count(*) FROM llm_assets_budget").scalar()
    print("run budgets in Postgres:", budgets)
    assert budgets >= 1
