"""What the tests share besides fixtures: the captains partitions, and readers of a run's
events (materializations, their metadata and usage, a failed step's message).

Example:
    >>> partition_range(CAPTAINS)["dagster/asset_partition_range_end"]
    'Benjamin Lafayette Sisko'
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

#: Partitions whose names differ in length, so their prompts (and usage) differ too.
CAPTAINS = ["Kirk", "Jean-Luc Picard", "Benjamin Lafayette Sisko"]
captains = dg.StaticPartitionsDefinition(CAPTAINS)


def partition_range(keys: Sequence[str]) -> dict[str, str]:
    """Run tags materializing ``keys[0]…keys[-1]`` in one run."""
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def event_of(result: dg.ExecuteInProcessResult, key: str) -> Any:
    """The one materialization of asset ``key`` (its user string) in ``result``."""
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return event


def metadata_values(event) -> dict:
    return {k: v.value for k, v in event.materialization.metadata.items()}


def usage_metadata(event) -> dict:
    return {k: v for k, v in metadata_values(event).items() if k.startswith("openai.")}


def failure_message(result) -> str:
    """The full error text (with causes) of the failed step of a run."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.to_string()
