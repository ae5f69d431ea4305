"""Embeddings where users keep them: one float32 vector column, and a LanceDB store.

* ``llm_assets.vector_store.column``: the ``embedding`` column of an embeddings frame,
  one fixed-length float32 array per row (Arrow ``fixed_size_list<float>[n]``, DuckDB
  ``FLOAT[n]``), and its matrix.
* ``llm_assets.vector_store.store``: ``VectorStore``, a LanceDB database with
  partition-aware writes in one commit, search, and an ANN index past a row count.
* ``llm_assets.vector_store.io_manager``: ``LanceDBIOManager``, each DataFrame
  asset as one table of it.
"""
