"""The request cache: identical requests are answered without calling the API.

- ``llm_assets.cache.keys``: which requests are the same (``CacheKeys``) and how a
  run uses the cache (``CacheMode``);
- ``llm_assets.cache.files``: where the answers live (``RequestCache``);
- ``llm_assets.cache.answers``: what a valid answer of each endpoint is;
- ``llm_assets.cache.store``: the answers of one session (``AnswerStore``):
  validated reads, stores that never lose an answer, each problem logged once.
"""

from llm_assets.cache.files import RequestCache
from llm_assets.cache.keys import CacheKeys, CacheMode, backend_identity

__all__ = ["CacheKeys", "CacheMode", "RequestCache", "backend_identity"]
