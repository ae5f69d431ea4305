"""Embeddings where users keep them: one float32 vector column, and a LanceDB store.

* ``column``: the ``embedding`` column of an embeddings frame,
  one fixed-length float32 array per row (Arrow ``fixed_size_list<float>[n]``, DuckDB
  ``FLOAT[n]``), and its matrix.
* ``store``: ``VectorStore``, a LanceDB database with
  partition-aware writes in one commit, search, and an ANN index past a row count.
* ``io_manager``: ``LanceDBIOManager``, each DataFrame
  asset as one table of it.
"""
