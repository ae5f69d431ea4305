"""Connection pools shared by the clients of a session, the httpx the SDK speaks, and the
event loop the engine runs them on.

Example:
    >>> pool = sync_pool()
    >>> pool.close()
"""

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx2 as httpx  # the httpx that openai 3.x speaks

from llm_assets import _compat

__all__ = ["async_pool", "httpx", "loop_factory", "sync_pool"]

POOL_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


@functools.cache
def ssl_context() -> Any:
    """One TLS context per process: building one reads the CA bundle (~50 ms)."""
    return httpx.create_ssl_context()


def sync_pool() -> httpx.BaseTransport:
    return httpx.HTTPTransport(limits=POOL_LIMITS, verify=ssl_context())


def async_pool() -> httpx.AsyncBaseTransport:
    """aiohttp's pool where installed (about 2× less CPU per request than httpx's, which
    matters at hundreds of requests per second), else httpx's own. Open it on the event
    loop that will use it."""
    transport = _compat.aiohttp_transport(limits=POOL_LIMITS, verify=ssl_context())
    return transport or httpx.AsyncHTTPTransport(limits=POOL_LIMITS, verify=ssl_context())


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where installed (less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
