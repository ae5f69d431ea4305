"""Definitions the scale tests run with the multiprocess executor, configured by the
environment the test gives each ``dagster`` process:

- ``SCALE_ASSETS``: how many chat answers assets (``answers_0``…), all on ``questions``;
- ``SCALE_ROWS``: questions per asset; ``SCALE_MAX_TOKENS``: each answer's ``max_tokens``;
- ``SCALE_BUDGET``: ``max_tokens_per_run`` of the run; ``SCALE_POOL``: the assets' pool;
- ``SCALE_FOLLOW=0``: don't pace by the provider's headers; ``SCALE_MAX_RETRIES``: the SDK's;
- ``SCALE_CONCURRENCY``: each step's ``max_concurrency`` (default 4);
- ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``: the server and key.

Each answers asset asks different questions (its own index is in the prompt), so the
server can tell whose request each is.
"""

import os

import dagster as dg
import pandas as pd

from llm_assets import OpenAIResource, build_chat_answers_asset

ROWS = int(os.environ.get("SCALE_ROWS", "20"))
BUDGET = int(os.environ["SCALE_BUDGET"]) if os.environ.get("SCALE_BUDGET") else None


@dg.asset
def questions() -> pd.DataFrame:
    return pd.DataFrame({"question": [f"scale question {i}" for i in range(ROWS)]})


answers = [
    build_chat_answers_asset(
        key=f"answers_{n}",
        upstream=questions,
        text_column="question",
        prompt=f"asset {n}: {{text}}",
        max_tokens=int(os.environ.get("SCALE_MAX_TOKENS", "20")),
        pool=os.environ.get("SCALE_POOL") or None,
    )
    for n in range(int(os.environ.get("SCALE_ASSETS", "3")))
]

defs = dg.Definitions(
    assets=[questions, *answers],
    resources={
        "openai": OpenAIResource(
            api_key=os.environ.get("OPENAI_API_KEY"),
            base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),  # set by the tests
            max_tokens_per_run=BUDGET,
            max_concurrency=int(os.environ.get("SCALE_CONCURRENCY", "4")),
            cache=False,
            follow_provider_limits=os.environ.get("SCALE_FOLLOW", "1") == "1",
            max_retries=int(os.environ.get("SCALE_MAX_RETRIES", "2")),
        )
    },
)
