"""``LocalOpenAIResource`` and the choice between OpenAI, another server and the local model.

``LocalOpenAIResource`` is an ``OpenAIResource`` whose base_url is an
embedded server it starts for the run (or step) and stops afterwards; nothing else in the
library knows it is local.

Examples:
    >>> resource = openai_resource_from_env()  # OpenAI, OPENAI_BASE_URL, or the local model
"""

import os
import sys

import dagster as dg
from pydantic import Field, PrivateAttr

from llm_assets.batch.settings import BatchSettings
from llm_assets.local.backend import LocalBackend
from llm_assets.local.server import CHAT_MODEL, EMBEDDING_MODEL, SWITCH_HINT, model_identity
from llm_assets.resource import OpenAIResource


class LocalOpenAIResource(OpenAIResource):
    """OpenAIResource answering with the embedded local model (SmolLM2-135M-Instruct chat,
    multilingual-e5-small embeddings), started on a free loopback port when a run needs it
    and stopped when it ends, also when it fails.

    Examples:
        >>> defs = dg.Definitions(assets=[], resources={"openai": LocalOpenAIResource()})
    """

    chat_model: str = Field(default=CHAT_MODEL, description="Default model for chat answers: the local one.")
    embedding_model: str = Field(default=EMBEDDING_MODEL, description="Default model for embeddings: the local one.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for the models (default: all).")
    ready_timeout: float = Field(default=60.0, gt=0, description="Seconds to wait for the local server to start.")
    batch: BatchSettings = Field(
        default=BatchSettings(poll_seconds=0.5, max_poll_seconds=5),
        description="Batch mode on the local server, which runs a batch in seconds: polled every 0.5-5 s.",
    )

    _backend: LocalBackend | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._backend = LocalBackend(threads=self.threads, ready_timeout=self.ready_timeout).start()
        context.log.info(
            f"Using the embedded local model at {self._backend.base_url} (offline, no key): {SWITCH_HINT}."
        )
        super().setup_for_execution(context)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        try:
            super().teardown_after_execution(context)
        finally:
            if self._backend is not None:
                self._backend.stop()
                self._backend = None

    @property
    def asset_kinds(self) -> set[str]:
        return {"local", "llama.cpp"}

    def resolved_base_url(self) -> str | None:
        return self._backend.base_url if self._backend is not None else None

    def cache_identity(self) -> str | None:
        """The model files the embedded server serves: its port changes every run."""
        return model_identity() if self._backend is not None else None


def openai_resource_from_env(**fields: object) -> OpenAIResource:
    """OpenAI when ``OPENAI_API_KEY`` is set, the server at ``OPENAI_BASE_URL`` when given,
    else the embedded local model; says which, and how to switch (see ``announce``).
    ``fields`` (e.g. ``chat_model``) pass through to the resource."""
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    if os.environ.get("OPENAI_API_KEY"):
        announce(f"using {base_url or 'OpenAI'} with OPENAI_API_KEY; unset it for the local model.")
        return OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"), base_url=base_url, **fields)
    if base_url:
        announce(f"using the server at OPENAI_BASE_URL={base_url}; unset it for the local model.")
        return OpenAIResource(base_url=base_url, **fields)
    announce(
        f"no OPENAI_API_KEY or OPENAI_BASE_URL: answering with the embedded local model ({CHAT_MODEL}, "
        f"{EMBEDDING_MODEL}); {SWITCH_HINT}."
    )
    return LocalOpenAIResource(**fields)


def announce(line: str) -> None:
    """Log which backend answers, and print it in a code server: ``dagster dev`` runs code
    servers at log level warning, so an INFO line would never reach its terminal (run and
    step processes, which load the definitions again, only log it)."""
    dg.get_dagster_logger("llm_assets").info(f"llm_assets: {line}")
    if {"grpc", "code-server"} & set(sys.argv):
        print(f"llm_assets: {line}", file=sys.stderr, flush=True)
