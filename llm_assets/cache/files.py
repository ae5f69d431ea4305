"""Where cached answers live: ``RequestCache``, response bodies by key.

It stores the response bodies as the server sent them, one file each, under any fsspec /
UPath location (local disk, ``s3://…``, ``memory://…``). Writes are atomic and durable
(temp file, ``fsync``, rename on local disks; one PUT on object stores), so neither
concurrent writers nor a power loss leave a partial entry. Entries are validated when
stored and read (``llm_assets.cache.answers``, by ``AnswerStore``):
a damaged one is a miss.

Examples:
    >>> cache = RequestCache("memory://llm-cache-doctest")
    >>> cache.put("ab" * 32, b'{"ok": true}')
    >>> cache.get_many(["ab" * 32, None])
    [b'{"ok": true}', None]
"""

import contextlib
import os
import shutil
import uuid

from upath import UPath

from llm_assets.errors import ConfigurationError


class RequestCache:
    """Response bodies by key under ``root`` (any fsspec / UPath location; ``~`` expands)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = UPath(os.path.expanduser(root) if isinstance(root, str) else root)
        self._local = root.protocol in ("", "file", "local")
        # fsspec keys a local ``cat`` of many paths by their absolute form: a relative root
        # would write entries that no lookup finds again
        self.root = root.absolute() if self._local else root

    @classmethod
    def checked(cls, root: str, field: str = "cache_dir") -> "RequestCache":
        """The cache at ``root``, after proving entries can be stored there (a probe written
        and removed); anything else is one error naming ``field``."""
        try:
            if not str(root).strip():
                raise ValueError("it is blank")
            cache = cls(root)
            probe = cache.root / f".probe.{uuid.uuid4().hex}"
            cache._write(probe, b"")
            probe.unlink()
        except Exception as error:  # OSError, or an fsspec backend's own (unknown protocol, missing package…)
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise ConfigurationError(
                f"The request cache can't be written at {str(root)!r} ({reason}): set "
                f"OpenAIResource({field}=...) to a writable directory or fsspec URL, or cache=False."
            ) from None
        return cache

    def path(self, key: str) -> UPath:
        """Where the entry of ``key`` lives."""
        return self.root / key[:2] / f"{key}.json"

    def get_many(self, keys: list[str | None]) -> list[bytes | None]:
        """The entries of ``keys`` (``None`` where absent), read with one fsspec ``cat``
        (concurrently on object stores). A location that can't be read raises ``OSError``."""
        paths = {key: self.path(key).path for key in keys if key}
        found = self.root.fs.cat(list(paths.values()), on_error="omit") if paths else {}
        return [found.get(paths[key]) if key else None for key in keys]

    def put(self, key: str, body: bytes, *, durable: bool = True) -> None:
        """Store ``body`` under ``key``: atomic, and durable (see the module docstring)
        unless many writes leave that to one ``sync`` at the end."""
        self._write(self.path(key), body, durable=durable)

    def sync(self) -> None:
        """Make every write so far durable: one ``sync`` of the disks instead of two
        ``fsync`` per entry (object stores are durable once a PUT returns)."""
        if self._local:
            os.sync()

    def _write(self, path: UPath, body: bytes, *, durable: bool = True) -> None:
        if not self._local:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)  # one PUT: object stores never show a partial object
            return
        directory = os.path.dirname(path.path)
        if os.path.isfile(directory) and os.path.abspath(os.path.dirname(directory)) == os.path.abspath(self.root.path):
            os.remove(directory)  # damage in the cache's own layout: a file where a shard directory goes
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{os.path.basename(path.path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(body)
                if durable:
                    file.flush()
                    os.fsync(file.fileno())
            if os.path.isdir(path.path):  # a damaged entry that became a directory: replace it
                shutil.rmtree(path.path)
            os.replace(temporary, path.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        if durable:
            _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the OS allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
