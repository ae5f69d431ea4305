"""The scale tests' definitions (:mod:`llm_assets_tests.scale.steps`: ``SCALE_ASSETS``
answers assets asking in parallel) on Celery workers, their values on S3."""

import dagster as dg

from llm_assets import PartitionedFilesystemIOManager
from llm_assets_tests.cluster.pipeline import STORE, celery_from_env
from llm_assets_tests.scale import steps

defs = dg.Definitions(
    assets=[steps.questions, *steps.answers],
    resources={
        "openai": steps.defs.resources["openai"],
        "io_manager": PartitionedFilesystemIOManager(base_dir=f"{STORE}/assets"),
    },
    executor=celery_from_env(),
)
