"""Batch mode: a materialization's requests through the OpenAI Batch API
(:class:`~llm_assets.batch.runner.BatchRunner`), configured by :class:`BatchSettings`, watched by
:func:`~llm_assets.sensors.build_batch_sensor`."""

from llm_assets.batch.settings import BatchSettings, RequestMode

__all__ = ["BatchSettings", "RequestMode"]
