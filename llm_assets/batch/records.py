"""Durable records of submitted batches, next to the request cache: what keeps a re-run
from paying twice.

A ``Submission`` is written *before* ``batches.create`` (with the fingerprint the
batch's metadata will carry) and again after it (with the batch id). A re-run of the same
requests finds it and re-attaches to the batch instead of creating another; a record
without a batch id (the process died during ``create``) is matched to its batch through
``batches.list`` and the fingerprint. Records live in any fsspec location, like the cache,
and are removed once their results are in the cache.

Examples:
    >>> store = SubmissionStore("memory://llm-records-doctest")
    >>> record = Submission("f00d", "captains/answers", "/v1/chat/completions", {"llm-1": ["k", "Kirk"]}, "run")
    >>> store.save(record)
    >>> [r.fingerprint for r in store.open("captains/answers")]
    ['f00d']
"""

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import openai

from llm_assets.cache import RequestCache
from llm_assets.errors import StorageError

_FOLDER = "batches"
#: Metadata key of the fingerprint on every batch this library creates.
FINGERPRINT = "llm_assets_fingerprint"
_CLOCK_SKEW = 300  # seconds a server's clock may differ from ours


@dataclass
class Submission:
    """One batch this library submitted (or was about to): its fingerprint, asset,
    endpoint, lines (``custom_id`` → [cache key, partition key]) and the run that sent it."""

    fingerprint: str
    asset: str
    endpoint: str
    lines: dict[str, list[str | None]]
    run_id: str
    backend: str = ""  # the request cache's identity of the server it was sent to
    created: float = field(default_factory=time.time)
    input_file_id: str | None = None
    batch_id: str | None = None
    cancel_requested: bool = False  # the run that created it was terminated and cancelled it

    @property
    def key(self) -> str:
        """Its file's name: the fingerprint for the server it was sent to (the same requests
        sent to two servers are two batches)."""
        return hashlib.sha256(f"{self.backend}\n{self.fingerprint}".encode()).hexdigest()

    @property
    def partitions(self) -> list[str]:
        return list(dict.fromkeys(pk for _, pk in self.lines.values() if pk is not None))

    @property
    def span(self) -> str:
        """``first...last`` of its partitions (one: its key; none: empty)."""
        keys = self.partitions
        return f"{keys[0]}...{keys[-1]}" if len(keys) > 1 else "".join(keys)


def _folder(asset: str) -> str:
    return asset.replace("/", "__")


class SubmissionStore:
    """Records under ``<root>/batches/<asset>/`` (``root``: the request cache's)."""

    def __init__(self, root: Any) -> None:
        self._entries = RequestCache(root)

    def _cache(self, asset: str) -> RequestCache:
        return RequestCache(self._entries.root / _FOLDER / _folder(asset))

    def save(self, record: Submission) -> None:
        """Write ``record`` durably (atomic rename after fsync, or one PUT); a store that
        refuses it (after its client's own retries) is a ``StorageError``."""
        cache = self._cache(record.asset)
        try:
            cache.put(record.key, json.dumps(asdict(record)).encode())
        except Exception as error:  # OSError, or any fsspec backend's own
            stage = "before anything was submitted" if record.input_file_id is None else "after its upload"
            raise StorageError(
                f"The batch record {cache.path(record.key)} could not be written ({type(error).__name__}: {error}), "
                f"{stage}: the store behind OpenAIResource(cache_dir=...) refused it. A re-run submits what no "
                "batch answered, and finds a batch created for these requests through its fingerprint."
            ) from error

    def written_at(self, record: Submission) -> float | None:
        """When the record file of ``record``'s fingerprint was last written (readable or
        not), or ``None`` when there is none."""
        try:
            stat = self._cache(record.asset).path(record.key).stat()
        except (FileNotFoundError, NotImplementedError):
            return None
        modified = getattr(stat, "st_mtime", None)
        return float(modified) if isinstance(modified, int | float) else record.created - 30 * 86_400

    def remove(self, record: Submission) -> None:
        path = self._cache(record.asset).path(record.key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def find_batch(self, client: Any, record: Submission) -> Any:
        """The record's batch (``openai.types.Batch``): by id, or (no id yet: the process
        died in ``create``) by the fingerprint in the batch metadata among the batches
        made since the record was written, through ``batches.list`` (newest first);
        ``None`` when the server has no such batch."""
        if record.batch_id is not None:
            try:
                return client.batches.retrieve(record.batch_id)
            except openai.NotFoundError:
                return None
        for batch in client.batches.list(limit=100):
            if batch.created_at < record.created - _CLOCK_SKEW:
                break  # made before the record was written: not its batch (nor any older one)
            if (batch.metadata or {}).get(FINGERPRINT) == record.fingerprint:
                record.batch_id = batch.id
                self.save(record)
                return batch
        return None

    def open(self, asset: str | None = None) -> list[Submission]:
        """The records of ``asset`` (all assets: ``None``), oldest first. An unreadable one
        is logged and skipped: when its requests are submitted again they have the same
        fingerprint, and its batch, if any, is found through it."""
        root = self._entries.root / _FOLDER
        pattern = f"{root.path}/{_folder(asset) if asset else '*'}/*/*.json"
        records = list(self._read(root.fs, sorted(root.fs.glob(pattern))))
        return sorted(records, key=lambda r: r.created)

    def _read(self, fs: Any, paths: list[str]) -> Iterator[Submission]:
        for path in paths:
            try:
                yield Submission(**json.loads(fs.cat_file(path)))
            except (OSError, ValueError, TypeError) as error:
                dg.get_dagster_logger("llm_assets").warning(
                    f"Ignoring the damaged batch record {path} ({type(error).__name__}: {error})."
                )
