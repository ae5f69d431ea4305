"""Batch mode: a materialization's requests through the OpenAI Batch API
(``BatchRunner``), configured by ``BatchSettings``, watched by
``build_batch_sensor``."""

from llm_assets.batch.settings import BatchSettings, RequestMode

__all__ = ["BatchSettings", "RequestMode"]
