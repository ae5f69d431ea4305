"""Workers killed mid-step (SIGKILL of the whole worker: a machine lost). Celery delivers the
step to another worker (``task_acks_late``, after the broker's visibility timeout), which
finds what the dead one left on S3: the batch record (so it re-attaches, and no second batch
is created), or the answers cached so far (so it sends only what they don't cover)."""

from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.cluster.cluster import STEPS, runs, step_workers
from llm_assets_tests.cluster.workers import KILL_VISIBILITY_TIMEOUT


def test_a_worker_killed_after_create_leaves_one_batch_that_another_worker_collects(cluster):
    cluster.visibility_timeout = KILL_VISIBILITY_TIMEOUT
    cluster.env["CLUSTER_MODE"] = "batch"
    with ScriptedBatchServer(cluster.server, hold_create=True) as holding:
        cluster.env["OPENAI_BASE_URL"] = holding.base_url
        with cluster.workers(2) as workers:
            run = cluster.launch(STEPS, wait=False)
            cluster.wait(lambda: holding.creates == 1 and len(holding.store.batches) == 1, run)
            killed = cluster.running_step("captains__answers", run)
            next(w for w in workers if w.name == killed).kill()  # the batch exists; its creator is gone
            holding.release.set()
            assert run.wait(600) == 0, cluster.output(run)[-5000:]
        assert holding.creates == 1 and len(holding.store.batches) == 1, "a second batch was created"
    instance = cluster.instance
    (only,) = runs(instance)
    survivor = step_workers(instance, only.run_id)["captains__answers"]
    assert survivor != killed, "the step was not delivered to another worker"
    assert cluster.server.stats.paths["/v1/chat/completions"] == 7, "one batch billed: one answer per captain"


def test_a_worker_killed_mid_run_leaves_answers_on_s3_and_another_sends_only_what_was_in_flight(cluster):
    cluster.visibility_timeout = KILL_VISIBILITY_TIMEOUT
    cluster.env.update(CLUSTER_ROWS="40", CLUSTER_CONCURRENCY="4")  # 280 answers, 4 in flight
    cluster.server.latency = 0.02
    with cluster.workers(2) as workers:
        run = cluster.launch(STEPS, wait=False)
        cluster.wait(lambda: cluster.server.stats.paths["/v1/chat/completions"] >= 100, run)
        killed = cluster.running_step("captains__answers", run)
        next(w for w in workers if w.name == killed).kill()
        sent_before = cluster.server.stats.paths["/v1/chat/completions"]
        assert run.wait(600) == 0, cluster.output(run)[-5000:]
    total = cluster.server.stats.paths["/v1/chat/completions"]
    resent = total - 280
    print(f"{sent_before} sent before the kill; {total} in all: {resent} sent again")
    assert 0 <= resent <= 4, "more than the requests in flight (max_concurrency 4) were sent again"
