"""The request cache: identical requests are answered without calling the API.

- :mod:`~llm_assets.cache.keys`: which requests are the same (:class:`CacheKeys`) and how a
  run uses the cache (:class:`CacheMode`);
- :mod:`~llm_assets.cache.files`: where the answers live (:class:`RequestCache`);
- :mod:`~llm_assets.cache.answers`: what a valid answer of each endpoint is;
- :mod:`~llm_assets.cache.store`: the answers of one session (:class:`AnswerStore`):
  validated reads, stores that never lose an answer, each problem logged once.
"""

from llm_assets.cache.files import RequestCache
from llm_assets.cache.keys import CacheKeys, CacheMode, backend_identity

__all__ = ["CacheKeys", "CacheMode", "RequestCache", "backend_identity"]
