"""The S3 store refuses writes (503 SlowDown, as S3 throttles) for a while mid-run, on steps
running on Celery workers: answers already billed still reach the output; the cache entries
that could not be stored are counted, warned about naming the store and the fault, and asked
again by the next run (and only they); a batch record that can't be written stops the
submission before anything is uploaded, and the run's failure names the store and the fault.

The workers' S3 client is set to give up sooner than its default (``AWS_MAX_ATTEMPTS=1``:
s3fs's own five attempts, about a second, instead of 25 over ~40 s); it still rides out a
short refusal, so a refused PUT is retried by the store client before it counts as failed.
"""

from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.cluster.cluster import STEPS
from llm_assets_tests.cluster.pipeline import CAPTAINS
from llm_assets_tests.scale.runs import materialization_metadata

ROWS = 10


def logged(instance) -> list[str]:
    """Every message of the instance's only run's event log."""
    (run,) = instance.get_runs()
    return [record.user_message for record in instance.all_logs(run.run_id)]


def test_refused_cache_writes_lose_no_answer_and_are_counted_and_asked_again(cluster):
    cluster.env.update(CLUSTER_ROWS=str(ROWS), CLUSTER_CONCURRENCY="2", AWS_MAX_ATTEMPTS="1")
    cluster.server.latency = 0.05
    chat = "/v1/chat/completions"
    with cluster.workers(2):
        run = cluster.launch(STEPS, wait=False)
        cluster.wait(lambda: cluster.server.stats.paths[chat] >= 10, run)
        cluster.s3.refuse(10**6, prefix=f"{cluster.root}/cache/")  # "for a while": until the answers are in
        cluster.wait(lambda: cluster.server.stats.paths[chat] >= ROWS * len(CAPTAINS) - 10, run)
        cluster.s3.refuse(0)
        assert run.wait(600) == 0, cluster.output(run)[-5000:]
        refused = cluster.s3.stats()["refused"].get("PUT", 0)
        instance = cluster.instance
        failures = sum(
            materialization_metadata(instance, "captains/answers", c).get("openai.cache_store_failures", 0)
            for c in CAPTAINS
        )
        stored = [k for k in cluster.s3.keys(f"{cluster.root}/cache") if k.endswith(".json") and "/batches/" not in k]
        for captain in CAPTAINS:
            answers = cluster.s3.read_frame(f"{cluster.store}/assets/captains/answers/{captain}")
            assert len(answers) == ROWS and answers["answer"].str.len().gt(0).all(), "a billed answer was lost"
        print(f"{refused} PUTs refused; {failures} answers not cached; {len(stored)} cached")
        assert failures >= 1 and failures + len(stored) == ROWS * len(CAPTAINS), "the failed stores were not counted"
        assert refused >= 5 * failures, "the store client did not retry a refused PUT"
        warned = [m for m in logged(instance) if "Could not store an answer in the request cache at s3://" in m]
        assert warned and "Please reduce your request rate" in warned[0], "no warning names the store and the fault"
        billed = cluster.server.stats.paths[chat]
        again = cluster.launch(STEPS)
        assert again.returncode == 0, cluster.output(again)[-5000:]
    assert cluster.server.stats.paths[chat] - billed == failures, "the re-run asked other than the uncached"


def test_a_batch_record_that_cant_be_written_stops_the_submission_before_upload(cluster):
    cluster.env.update(CLUSTER_MODE="batch", AWS_MAX_ATTEMPTS="1")
    with ScriptedBatchServer(cluster.server) as batches:
        cluster.env["OPENAI_BASE_URL"] = batches.base_url
        cluster.s3.refuse(10**6, prefix=f"{cluster.root}/cache/batches/")
        with cluster.workers(1):
            run = cluster.launch(STEPS)
        output = cluster.output(run)
        assert run.returncode != 0
        assert batches.creates == 0 and not batches.store.files, "something was submitted"
    assert f"The batch record {cluster.store}/cache/batches/captains__answers/" in output, output[-5000:]
    assert "before anything was submitted" in output and "Please reduce your request rate" in output
