"""Property: whatever an upstream asset returns, a factory either builds the correct table
or fails with one LLMAssetsError naming the field, before anything is billed. Never a raw
exception from a dependency, never a billed answer lost."""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_assets import build_chat_answers_asset, build_embeddings_asset, embedding_matrix
from llm_assets_tests.support import failure_message

#: Any Unicode (lone surrogates included), control characters, and now and then a long text.
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=2000, max_size=6000),
)
SENDABLE = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
CELL = st.one_of(ANY_TEXT, ANY_TEXT, st.none(), st.integers(), st.floats(allow_nan=True), st.booleans())
CELLS = st.one_of(st.lists(SENDABLE, max_size=5), st.lists(CELL, max_size=5))


@st.composite
def upstream_values(draw: st.DrawFn) -> Any:
    """Frames of every shape (zero rows, duplicate columns, other dtypes), dicts, lists, scalars."""
    cells = draw(CELLS)
    shape = draw(st.sampled_from(["frame", "string_dtype", "duplicate", "other_column", "dict", "dict_other"]))
    shape = draw(st.sampled_from([shape, "list", "scalar"])) if draw(st.booleans()) else shape
    if shape == "frame":
        return pd.DataFrame({"text": pd.Series(cells, dtype=object), "n": range(len(cells))})
    if shape == "string_dtype":
        return pd.DataFrame({"text": pd.Series([c if isinstance(c, str) else None for c in cells], dtype="string")})
    if shape == "duplicate":
        return pd.DataFrame([[c, c] for c in cells], columns=["text", "text"])
    if shape == "other_column":
        return pd.DataFrame({"body": pd.Series(cells, dtype=object)})
    if shape == "dict":
        return {"text": cells}
    if shape == "dict_other":
        return {"body": cells}
    if shape == "list":
        return cells
    return cells[0] if cells else draw(CELL)


def expected_texts(value: Any) -> list[str] | None:
    """The texts a valid value holds, or ``None`` when it must be refused."""
    if isinstance(value, pd.DataFrame):
        if not len(value):
            return []  # no rows: an empty partition, whatever the columns
        if list(value.columns).count("text") != 1:
            return None
        cells = value["text"].tolist()
    elif isinstance(value, dict):
        cells = value.get("text")
    elif isinstance(value, list):
        cells = value
    else:
        cells = [value]
    if cells is None:
        return None
    for cell in cells:
        if not isinstance(cell, str) or not cell.strip():
            return None
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return cells


def build(factory: str, value: Any) -> list[dg.AssetsDefinition]:
    @dg.asset(key="texts")
    def texts() -> Any:
        return value

    if factory == "chat":
        return [texts, build_chat_answers_asset(key="out", upstream=texts, text_column="text", prompt="{text}")]
    return [texts, build_embeddings_asset(key="out", upstream=texts, text_column="text", dimensions=4)]


PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.mark.slow  # 60 materializations
@PROPERTY
@given(factory=st.sampled_from(["chat", "embeddings"]), value=upstream_values())
def test_any_upstream_gives_the_table_or_one_clear_error(server, materialize, factory, value):
    sent_before = len(server.stats.requests)
    result = materialize(build(factory, value), raise_on_error=False)
    sent = len(server.stats.requests) - sent_before
    texts = expected_texts(value)
    if texts is None:
        assert not result.success, f"accepted {value!r}"
        message = failure_message(result)
        assert "llm_assets.errors.ConfigurationError: Upstream texts" in message, message
        assert sent == 0  # refused before anything was sent (and billed)
        return
    assert result.success, failure_message(result)
    frame = result.output_for_node("out")
    if factory == "chat":
        assert frame["prompt"].tolist() == texts and frame["error"].isna().all()
        assert frame["answer"].notna().all()
        assert sent == int((~frame["cached"]).sum())  # every billed answer is in the table
    else:
        assert frame["text"].tolist() == texts
        vectors = embedding_matrix(frame)
        assert vectors.shape == (len(texts), 4 if texts else 0) and np.isfinite(vectors).all()
