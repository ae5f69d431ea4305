"""What HTTP can carry, checked before anything is sent: base URLs, header names and
values, and text for a JSON body. Each check raises one ``LLMAssetsError``
naming the field and the fix, instead of a dependency's exception at first use.

Examples:
    >>> check_base_url("http://127.0.0.1:8O80/v1", "base_url")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llm_assets.errors.ConfigurationError: base_url 'http://127.0.0.1:8O80/v1' is not a valid URL (Invalid port: ...
"""

import json
import re
from typing import Any

from llm_assets.errors import ConfigurationError
from llm_assets.http.pools import httpx

_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")  # a name, IPv4 or IPv6 address (IDNs arrive punycoded)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 header field name
_HINT = "set OpenAIResource(base_url=...) or OPENAI_BASE_URL to e.g. http://127.0.0.1:8000/v1, or unset it for OpenAI"


def _shown(url: str) -> str:
    """``url`` as it may appear in an error: credentials masked."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def check_base_url(url: str, field: str) -> httpx.URL:
    """The parsed ``url``; raises unless it is an absolute http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise ConfigurationError(f"{field} {_shown(url)!r} is not a valid URL ({error}): {_HINT}.") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"{field} {_shown(url)!r} is not an http(s) URL with a host: {_HINT}.")
    if not _HOST.match(parsed.raw_host.decode("ascii")):
        raise ConfigurationError(f"{field} {_shown(url)!r} is not a valid URL (invalid host {parsed.host!r}): {_HINT}.")
    if parsed.userinfo:
        raise ConfigurationError(
            f"{field} {_shown(url)!r} holds credentials: remove them from the URL, and pass the key as "
            "OpenAIResource(api_key=...) (or another header with default_headers=...)."
        )
    if parsed.query or parsed.fragment or "?" in url or "#" in url:
        raise ConfigurationError(
            f"{field} {_shown(url)!r} has a query string or fragment, which the OpenAI client can't append "
            "paths to: remove it (query parameters such as api-version belong to the server's own client)."
        )
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigurationError(
            f"{field} {_shown(url)!r} is not a valid URL (port {parsed.port} is not in 1-65535): {_HINT}."
        )
    return parsed


def is_openai(url: str) -> bool:
    """Whether ``url`` is OpenAI's own API (where a key is always needed)."""
    host = httpx.URL(url).host.lower().rstrip(".")
    return host == "openai.com" or host.endswith(".openai.com")


def check_header_name(name: str) -> None:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ConfigurationError(
            f"default_headers has the name {name!r}, which is not a valid HTTP header name: use letters, "
            "digits and -, without spaces or ':'."
        )


def check_header_value(field: str, value: str | None) -> None:
    """Header values must be printable ASCII (the value itself is never shown: it may be a key)."""
    if value is None:
        return
    if not value.isascii() or not value.isprintable():
        raise ConfigurationError(
            f"{field} holds a character that HTTP headers can't carry (non-ASCII, a line break or another "
            "control character, often from copy-paste): set it again, typed or copied as plain text."
        )


def check_text(text: str, where: str) -> None:
    """Text for a JSON request body must be encodable as UTF-8 (no lone surrogates, e.g.
    from bytes decoded with ``errors='surrogateescape'``)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigurationError(
            f"{where} holds {text[error.start : error.end]!r} at character {error.start}, which can't be "
            "sent (not valid Unicode text): clean it upstream, e.g. with "
            "text.encode('utf-8', 'replace').decode('utf-8'). Nothing was sent."
        ) from None


def check_model(model: str, field: str, where: str) -> None:
    """A model name must be non-empty, sendable text (``where`` says where it is set)."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"{field} is empty: set {where} to a model name, e.g. gpt-4o-mini.")
    check_text(model, field)


def check_body(body: Any, where: str) -> dict[str, Any]:
    """``body`` as the server will see it (a JSON round trip: keys become strings, tuples
    lists), after checking it is a JSON object of finite numbers and sendable text with
    keys of one type, and not a stream (the factories read whole answers). A translator's
    hooks build it; the engine and the transport must key the same body for the cache."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list | tuple) or body.get("stream"):
        raise ConfigurationError(
            f"{where} is not a non-streamed chat request (messages list, no stream=True): check the "
            "translator's get_messages and get_params."
        )
    try:
        encoded = json.dumps(body, allow_nan=False, ensure_ascii=False, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as error:  # UnicodeEncodeError included
        raise ConfigurationError(
            f"{where} can't be sent as JSON ({type(error).__name__}: {error}): give the translator's "
            "get_messages / get_params only text, finite numbers, lists and dicts."
        ) from None
    return json.loads(encoded)
