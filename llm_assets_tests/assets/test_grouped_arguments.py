"""The factories' grouped arguments: ``defaults=`` (a run config: ``ChatConfig``,
``EmbeddingConfig``, ``PlotConfig``) and ``upstream=Upstream(...)`` define the same asset
(code version, run config defaults, input) as the separate keywords they group; giving
both, disagreeing, is one error naming both."""

import dagster as dg
import pandas as pd
import pytest

from llm_assets import (
    CacheMode,
    ChatConfig,
    ConfigurationError,
    EmbeddingConfig,
    ErrorPolicy,
    PlotConfig,
    RequestMode,
    Upstream,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_pca_plot_asset,
    embedding_matrix,
)
from llm_assets_tests.support import CAPTAINS, captains

ANSWERS = dict(key="answers", partitions_def=captains, prompt="{question} Say it {tone}.")
#: Every run config default the chat factory takes as a keyword.
CHAT_KEYWORDS = dict(
    question="Why explore?",
    max_tokens=64,
    temperature=0.1,
    chat_model="gpt-4.1",
    variables={"tone": "dryly"},
    mode=RequestMode.BATCH,
    max_parse_retries=4,
)


@dg.asset(partitions_def=captains, backfill_policy=dg.BackfillPolicy.single_run())
def texts() -> pd.DataFrame:
    return pd.DataFrame({"text": ["Why?"]})


def version_of(asset: dg.AssetsDefinition) -> str:
    (version,) = asset.code_versions_by_key.values()
    return version


def launchpad(asset: dg.AssetsDefinition) -> dict:
    """The run config defaults the launchpad shows."""
    return asset.op.config_field.default_value


def same_asset(a: dg.AssetsDefinition, b: dg.AssetsDefinition) -> bool:
    return version_of(a) == version_of(b) and launchpad(a) == launchpad(b)


def test_chat_defaults_as_a_config_or_as_keywords_define_the_same_asset():
    keywords = build_chat_answers_asset(**ANSWERS, **CHAT_KEYWORDS)
    grouped = build_chat_answers_asset(**ANSWERS, defaults=ChatConfig(**CHAT_KEYWORDS))
    assert same_asset(grouped, keywords)
    half = dict(list(CHAT_KEYWORDS.items())[:3])
    mixed = build_chat_answers_asset(
        **ANSWERS, **half, defaults=ChatConfig(**{k: v for k, v in CHAT_KEYWORDS.items() if k not in half})
    )
    assert same_asset(mixed, keywords)
    agreeing = build_chat_answers_asset(**ANSWERS, **CHAT_KEYWORDS, defaults=ChatConfig(**CHAT_KEYWORDS))
    assert same_asset(agreeing, keywords)  # the same value twice is no conflict
    plain = build_chat_answers_asset(**ANSWERS, variables={"tone": "dryly"})
    assert version_of(plain) != version_of(keywords)


def test_chat_defaults_left_out_keep_the_run_configs_own():
    base = build_chat_answers_asset(**ANSWERS, variables={"tone": "dryly"})
    spelled_out = ChatConfig(max_tokens=256, temperature=0.7, variables={"tone": "dryly"})
    assert same_asset(build_chat_answers_asset(**ANSWERS, defaults=spelled_out), base)
    assert same_asset(build_chat_answers_asset(**ANSWERS, variables={"tone": "dryly"}, defaults=ChatConfig()), base)


def test_chat_defaults_reach_fields_without_a_keyword_and_leave_the_code_version():
    base = build_chat_answers_asset(**ANSWERS, variables={"tone": "dryly"})
    config = ChatConfig(variables={"tone": "dryly"}, cache=CacheMode.REFRESH, on_error=ErrorPolicy.RECORD)
    grouped = build_chat_answers_asset(**ANSWERS, defaults=config)
    assert launchpad(grouped)["cache"] == "REFRESH" and launchpad(grouped)["on_error"] == "RECORD"
    assert version_of(grouped) == version_of(base)  # how failures and the cache are handled: not the answers


def test_the_variables_of_chat_defaults_fill_placeholders():
    with pytest.raises(ConfigurationError, match="tone"):
        build_chat_answers_asset(**ANSWERS)
    build_chat_answers_asset(**ANSWERS, defaults=ChatConfig(variables={"tone": "dryly"}))


def test_a_keyword_disagreeing_with_defaults_is_one_error_naming_both():
    with pytest.raises(ConfigurationError) as error:
        build_chat_answers_asset(
            **ANSWERS,
            max_tokens=64,
            temperature=0.2,
            question="Why?",
            defaults=ChatConfig(max_tokens=128, temperature=0.3, question="Why?", variables={"tone": "dryly"}),
        )
    message = str(error.value)
    assert message.startswith("build_chat_answers_asset (answers) got max_tokens=64 and defaults=ChatConfig(")
    assert "max_tokens=64 and defaults=ChatConfig(max_tokens=128)" in message
    assert "temperature=0.2 and defaults=ChatConfig(temperature=0.3)" in message
    assert "question" not in message  # the same value in both places
    assert message.endswith("set each default in one place.")
    with pytest.raises(ConfigurationError, match=r"dimensions=8 and defaults=EmbeddingConfig\(dimensions=16\)"):
        build_embeddings_asset(upstream=texts, dimensions=8, defaults=EmbeddingConfig(dimensions=16))
    with pytest.raises(ConfigurationError, match=r"title='A' and defaults=PlotConfig\(title='B'\)"):
        build_pca_plot_asset(upstream="embeddings", title="A", defaults=PlotConfig(title="B"))


def test_defaults_of_another_asset_kind_are_refused():
    with pytest.raises(ConfigurationError, match="is of type EmbeddingConfig: give a ChatConfig"):
        build_chat_answers_asset(**ANSWERS, defaults=EmbeddingConfig())
    with pytest.raises(ConfigurationError, match="is of type ChatConfig: give a PlotConfig"):
        build_pca_plot_asset(upstream="embeddings", defaults=ChatConfig())


def test_embedding_and_plot_defaults_as_a_config_or_as_keywords_define_the_same_asset():
    keywords = dict(embedding_model="text-embedding-3-large", dimensions=256, batch_size=10, mode=RequestMode.BATCH)
    one = build_embeddings_asset(key="e", upstream=texts, **keywords)
    other = build_embeddings_asset(key="e", upstream=texts, defaults=EmbeddingConfig(**keywords, max_batch_tokens=99))
    assert version_of(one) == version_of(other)
    assert launchpad(other) == {**launchpad(one), "max_batch_tokens": 99}
    assert version_of(one) != version_of(build_embeddings_asset(key="e", upstream=texts))

    one = build_pca_plot_asset(key="m", upstream=one, title="Who answers?")
    assert same_asset(one, build_pca_plot_asset(key="m", upstream=other, defaults=PlotConfig(title="Who answers?")))


def test_upstream_grouped_or_as_keywords_define_the_same_asset():
    mapping = dg.LastPartitionMapping()
    keywords = dict(text_column="text", partition_mapping=mapping)
    chat = dict(key="a", prompt="Sum up: {text}")
    one = build_chat_answers_asset(**chat, upstream=texts, **keywords)
    for upstream in (Upstream(texts, **keywords), Upstream(texts, text_column="text"), Upstream(texts)):
        rest = {k: v for k, v in keywords.items() if getattr(upstream, k) is None}
        other = build_chat_answers_asset(**chat, upstream=upstream, **rest)
        assert version_of(other) == version_of(one)
        assert other.partitions_def is captains  # the upstream's, as before
        (asset_in,) = other.keys_by_input_name.values()
        assert asset_in == texts.key
    assert version_of(build_chat_answers_asset(**chat, upstream=Upstream(texts, text_column="text"))) != version_of(one)

    one = build_embeddings_asset(key="e", upstream=texts, **keywords)
    other = build_embeddings_asset(key="e", upstream=Upstream(texts, **keywords))
    assert version_of(other) == version_of(one) and other.partitions_def is captains


def test_upstream_takes_any_asset_like_and_defaults_its_text_column():
    by_key = build_embeddings_asset(key="e", upstream=Upstream(dg.AssetKey("texts")), partitions_def=captains)
    by_spec = build_embeddings_asset(key="e", upstream=Upstream(dg.AssetSpec("texts", partitions_def=captains)))
    as_before = build_embeddings_asset(key="e", upstream="texts", text_column="answer", partitions_def=captains)
    assert version_of(by_key) == version_of(by_spec) == version_of(as_before)
    assert Upstream.of(texts).text_column == "answer"


def test_an_upstream_keyword_disagreeing_with_the_upstream_is_one_error_naming_both():
    with pytest.raises(ConfigurationError) as error:
        build_embeddings_asset(
            upstream=Upstream(texts, text_column="text", partition_mapping=dg.LastPartitionMapping()),
            text_column="body",
            partition_mapping=dg.AllPartitionMapping(),
        )
    message = str(error.value)
    assert "upstream=Upstream(..., text_column='text') and text_column='body'" in message
    assert "partition_mapping=LastPartitionMapping()" in message and "AllPartitionMapping()" in message
    assert message.endswith("set each in one place (the Upstream or the keyword).")
    build_embeddings_asset(upstream=Upstream(texts, text_column="text"), text_column="text")  # agreeing: fine
    with pytest.raises(ConfigurationError, match="give the embeddings asset alone"):
        build_pca_plot_asset(upstream=Upstream("embeddings", text_column="text"))


def test_grouped_arguments_materialize_as_the_keywords_do(server, materialize):
    upstream = Upstream(texts, text_column="text")
    answers = build_chat_answers_asset(
        key="answers", upstream=upstream, prompt="{text} {tone}", defaults=ChatConfig(variables={"tone": "Briefly."})
    )
    embeddings = build_embeddings_asset(
        key="embeddings", upstream=Upstream(answers), defaults=EmbeddingConfig(dimensions=8)
    )
    result = materialize([texts, answers, embeddings], partition_key=CAPTAINS[0])
    assert result.success
    assert result.output_for_node("answers")["prompt"].tolist() == ["Why? Briefly."]
    assert embedding_matrix(result.output_for_node("embeddings")).shape == (1, 8)
