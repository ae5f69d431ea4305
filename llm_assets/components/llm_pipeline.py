"""``LLMPipelineComponent``: answers → embeddings → PCA map, declared in YAML.

``defs/captains/defs.yaml``::

    type: llm_assets.components.LLMPipelineComponent
    attributes:
      key_prefix: captains
      partitions: [Kirk, Picard, Janeway]
      system_prompt: "You are Captain {partition_key} of Star Trek."
      prompt: "{question} Answer in at most three sentences."
      question: What is the most important quality of a starship captain?
      mode: BATCH          # optional: the OpenAI Batch API by default (LIVE otherwise)
      pool: openai         # optional: a Dagster pool for the two requesting steps
      automation_condition: "{{ dg.AutomationCondition.eager() }}"  # optional: all three assets
      checks:              # optional: the generated asset checks, by name
        no_truncated_answers: {max_rate: 0.1, severity: ERROR, blocking: true}
        no_refusals: false

The assets need an ``openai`` resource (and, for single-run backfills, an
``io_manager`` that is a ``PartitionedFilesystemIOManager``) bound in the project's
definitions, where the API key stays an ``EnvVar``.
"""

from typing import Annotated, Any, Literal

import dagster as dg
import pydantic

from llm_assets.assets.pipeline import build_llm_pipeline_assets
from llm_assets.batch.settings import RequestMode


class LLMPipelineComponent(dg.Component, dg.Resolvable, dg.Model):
    """One question asked per partition, the answers embedded and mapped in 2-D with PCA."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)  # the resolved automation condition

    partitions: list[str] = pydantic.Field(description="Static partition keys, e.g. one per persona.")
    prompt: str = pydantic.Field(description="User prompt template: {partition_key}, {question}, …")
    system_prompt: str | None = pydantic.Field(default=None, description="System prompt template.")
    question: str | None = pydantic.Field(default=None, description="Default of the run config `question`.")
    key_prefix: str | None = pydantic.Field(default=None, description="Prefix of the three asset keys.")
    group_name: str | None = pydantic.Field(default=None, description="Asset group of the three assets.")
    chat_model: str | None = pydantic.Field(default=None, description="Chat model (else the resource's).")
    embedding_model: str | None = pydantic.Field(default=None, description="Embedding model (else the resource's).")
    max_tokens: int | None = pydantic.Field(
        default=None, ge=1, description="Most tokens per answer (default: the run config's, 256)."
    )
    temperature: float | None = pydantic.Field(
        default=None, ge=0, le=2, description="Sampling temperature (default: the run config's, 0.7)."
    )
    mode: Literal["LIVE", "BATCH"] | None = pydantic.Field(
        default=None, description="Default of the run config `mode`: LIVE requests, or the OpenAI Batch API."
    )
    pool: str | None = pydantic.Field(
        default=None,
        description="Dagster concurrency pool of the answers and embeddings steps; limit it with "
        "`dagster instance concurrency set <pool> <n>`.",
    )
    response_format: dict[str, Any] | None = pydantic.Field(
        default=None,
        description="JSON Schema of a structured answer (an object): each field becomes a typed column.",
    )
    max_parse_retries: int | None = pydantic.Field(
        default=None, ge=0, le=10, description="Times an invalid structured answer is asked again (default 2)."
    )
    checks: dict[str, dict[str, Any] | bool] | None = pydantic.Field(
        default=None,
        description="The generated asset checks by name (e.g. no_truncated_answers): false turns one off, or "
        "{max_rate, severity: WARN|ERROR, blocking, enabled} (a CheckRule).",
    )
    automation_condition: Annotated[
        dg.AutomationCondition | None,
        dg.Resolver.default(
            model_field_type=str,
            description="When Dagster materializes the three assets by itself, e.g. "
            "'{{ dg.AutomationCondition.eager() }}' (the automation sensor must be running).",
        ),
    ] = None
    freshness_policy: Annotated[
        dg.FreshnessPolicy | None,
        dg.Resolver.default(
            model_field_type=str,
            description="How fresh the three assets must be, e.g. "
            "'{{ dg.FreshnessPolicy.time_window(fail_window=datetime.timedelta(hours=24)) }}'.",
        ),
    ] = None
    code_version: str | None = pydantic.Field(
        default=None,
        description="Code version of the three assets; by default each derives its own from its prompts, "
        "models and parameters, so an edit here marks it changed.",
    )
    deps: list[str] | None = pydantic.Field(
        default=None, description="Keys (a/b) of assets the three depend on without loading them."
    )
    op_tags: dict[str, Any] | None = pydantic.Field(
        default=None, description="Tags of the steps, e.g. for the executor (dagster-k8s/config…)."
    )
    resource_key: str | None = pydantic.Field(default=None, description="Key of the OpenAIResource (openai).")
    io_manager_key: str | None = pydantic.Field(default=None, description="Key of the I/O manager (io_manager).")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        pipeline = build_llm_pipeline_assets(
            partitions_def=dg.StaticPartitionsDefinition(self.partitions),
            prompt=self.prompt,
            system_prompt=self.system_prompt,
            question=self.question,
            key_prefix=self.key_prefix,
            group_name=self.group_name,
            chat_model=self.chat_model,
            embedding_model=self.embedding_model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            mode=RequestMode[self.mode] if self.mode else None,
            pool=self.pool,
            response_format=self.response_format,
            max_parse_retries=self.max_parse_retries,
            checks=self.checks if self.checks is not None else True,
            resource_key=self.resource_key,
            io_manager_key=self.io_manager_key,
            automation_condition=self.automation_condition,
            freshness_policy=self.freshness_policy,
            code_version=self.code_version,
            deps=[dg.AssetKey.from_user_string(key) for key in self.deps] if self.deps else None,
            op_tags=self.op_tags,
        )
        return dg.Definitions(assets=list(pipeline))
