"""How a materialization sends its requests (``RequestMode``) and how batch mode
talks to the Batch API (``BatchSettings``, the resource's ``batch`` field).

Examples:
    >>> settings = BatchSettings(poll_seconds=5, max_wait_seconds=3600)
    >>> settings.completion_window, settings.max_requests_per_file
    ('24h', 50000)
"""

import enum

import dagster as dg
import pydantic


class RequestMode(enum.Enum):
    """LIVE sends each request and waits for its answer; BATCH submits them all to the
    OpenAI Batch API (half the price, its own rate limits) and collects the results."""

    LIVE = "live"
    BATCH = "batch"


class BatchSettings(dg.Config):
    """The Batch API's limits and how long and how often a step waits for a batch."""

    completion_window: str = pydantic.Field(
        default="24h", pattern=r"^[1-9][0-9]*[hd]$", description="Time the server may take per batch (OpenAI: 24h)."
    )
    poll_seconds: float = pydantic.Field(
        default=30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between the first polls."
    )
    max_poll_seconds: float = pydantic.Field(
        default=300.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Polls back off (x1.5 each) up to this many seconds apart.",
    )
    max_wait_seconds: float = pydantic.Field(
        default=86_400.0,
        ge=0,
        le=30 * 86_400,
        allow_inf_nan=False,
        description="Seconds a step waits for its batches; then it fails, and re-materializing (or "
        "build_batch_sensor) collects them without submitting again. 0: submit and return.",
    )
    max_requests_per_file: int = pydantic.Field(
        default=50_000, ge=1, le=10_000_000, description="Requests per batch (OpenAI: 50,000)."
    )
    max_bytes_per_file: int = pydantic.Field(
        default=200_000_000, ge=1024, description="Bytes of JSONL per batch input file (OpenAI: 200 MB)."
    )
    max_inputs_per_file: int = pydantic.Field(
        default=50_000,
        ge=1,
        le=10_000_000,
        description="Inputs per batch, counting each text of an embeddings request (OpenAI: 50,000).",
    )
