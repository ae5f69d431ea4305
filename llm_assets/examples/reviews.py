"""Many prompts per partition, and chained prompts: product reviews → summaries → report.

The example of the guide "Your own code location" (docs/guides/code-location.md), runnable as is:
``dagster dev -m llm_assets.examples.reviews``.
"""

import dagster as dg
import pandas as pd

from llm_assets import (
    OpenAIResource,
    PartitionedFilesystemIOManager,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_pca_plot_asset,
)

REVIEWS = {
    "espresso": [
        "Rich crema, but the steam wand is weak.",
        "Stopped heating after a month.",
        "Best coffee I have made at home.",
    ],
    "grinder": ["Consistent grind, very loud.", "Burrs clog with oily beans.", "Great value for the price."],
    "kettle": ["Boils fast and the temperature hold is handy.", "The lid hinge broke.", "Pretty and quiet."],
}
products = dg.StaticPartitionsDefinition(list(REVIEWS))


@dg.asset(partitions_def=products, backfill_policy=dg.BackfillPolicy.single_run(), group_name="reviews")
def reviews(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Customer reviews: many texts per product; one run may load several products."""
    return pd.DataFrame([{"partition_key": p, "body": body} for p in context.partition_keys for body in REVIEWS[p]])


summaries = build_chat_answers_asset(  # one request per review row
    key="review_summaries",
    upstream=reviews,
    text_column="body",
    system_prompt="You summarise customer reviews of our {partition_key}.",
    prompt="Summarise in one short sentence: {text}",
    max_tokens=60,
    temperature=0,
    group_name="reviews",
)
report = build_chat_answers_asset(  # chained: all summaries of a product → one report
    key="review_report",
    upstream=summaries,
    one_request_per_row=False,
    prompt="Write a structured report (pros, cons, actions) from these summaries:\n{text}",
    max_tokens=300,
    group_name="reviews",
)
embeddings = build_embeddings_asset(key="summary_embeddings", upstream=summaries, group_name="reviews")
review_map = build_pca_plot_asset(key="review_map", upstream=embeddings, label_column="text", group_name="reviews")

defs = dg.Definitions(
    assets=[reviews, summaries, report, embeddings, review_map],
    resources={
        "openai": OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"), chat_model="gpt-4o-mini"),
        "io_manager": PartitionedFilesystemIOManager(),  # stores single-run backfills per partition
    },
)
