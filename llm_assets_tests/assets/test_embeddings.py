"""build_embeddings_asset: batched, in order, one float32 vector column, exact usage."""

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from llm_assets import build_embeddings_asset, embedding_matrix
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.testing import scripted_vector
from llm_assets_tests.support import failure_message, metadata_values, usage_metadata


def test_embeddings_batch_keep_order_and_store_one_vector_column(server, materialize):
    texts = [f"text number {i} " + "word " * (i % 4) for i in range(10)]

    @dg.asset
    def docs() -> pd.DataFrame:
        return pd.DataFrame({"body": texts})

    embeddings = build_embeddings_asset(key="embeddings", upstream=docs, text_column="body", batch_size=4, dimensions=8)
    result = materialize([docs, embeddings])
    frame = result.output_for_node("embeddings")
    assert server.stats.paths["/v1/embeddings"] == 3  # 4 + 4 + 2 inputs
    assert frame["text"].tolist() == texts
    matrix = embedding_matrix(frame)
    assert matrix.dtype == np.float32 and matrix.shape == (10, 8)
    expected = np.stack([scripted_vector(t, 8) for t in texts])
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    assert list(frame.columns) == ["partition_key", "row", "text", "model", "embedding"]
    assert frame["embedding"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), 8))
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["embeddings"]]
    assert usage_metadata(event) == server.usage.to_metadata(PRICES)
    assert metadata_values(event)["dimensions"] == 8


def test_missing_text_column(server, materialize):
    @dg.asset
    def rows() -> pd.DataFrame:
        return pd.DataFrame({"body": ["fine"]})

    embeddings = build_embeddings_asset(key="vectors", upstream=rows)
    result = materialize(
        [rows, embeddings],
        raise_on_error=False,
    )
    assert "has no column 'answer' (columns: ['body']): pass text_column=" in failure_message(result)
