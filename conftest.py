"""Every Python block of the README and the docs site runs as a test (Sybil).

Each Markdown page is one namespace, its blocks run in order, as a reader would paste
them: a page starts in a fresh folder of its own (its working directory and its
``DAGSTER_HOME``), with ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` naming a scripted
loopback server (``llm_assets.testing.ScriptedOpenAIServer``), so no block reaches the
internet and every answer, vector and token count is the server's. The server is in the
page's namespace as ``scripted_server``: hidden blocks (``<!-- invisible-code-block:
python -->``) compare what a page recorded with what the server billed. A block that
starts with ``>>>`` is a doctest: its printed output is checked too (``...`` matches
anything, whitespace is normalised). ``<!-- skip: next -->`` skips the next block.

Run one page: ``.venv/bin/python -m pytest docs/guides/batch-mode.md``. With pytest-xdist, keep
each page on one worker: ``--dist loadfile``, as ``scripts/test`` runs.
"""

import doctest
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from llm_assets.testing import ScriptedOpenAIServer

#: The models the pages name, as OpenAI names what answered them.
SERVED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "text-embedding-3-small": "text-embedding-3-small"}
#: What a page may change in the process: restored when it ends.
ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DAGSTER_HOME")
DAGSTER_YAML = "telemetry:\n  enabled: false\n"
#: Pages that start the real embedded model: in the slow tier, with the other end-to-end tests.
SLOW_PAGES = {"local-model.md"}


def _start_page(namespace: dict[str, Any]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llm_assets_docs_"))
    home = folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    server = ScriptedOpenAIServer(served_models=SERVED).start()
    namespace["_page"] = (folder, Path.cwd(), {name: os.environ.get(name) for name in ENVIRONMENT})
    namespace["scripted_server"] = server
    os.environ.update(OPENAI_API_KEY="sk-docs-not-a-real-key", OPENAI_BASE_URL=server.base_url, DAGSTER_HOME=str(home))
    os.chdir(folder)


def _end_page(namespace: dict[str, Any]) -> None:
    """Restores the process as the page found it, and closes what the page left open (its
    instances, a Batch API server) even when a block failed before the page's own end."""
    for value in namespace.values():
        if isinstance(value, dg.DagsterInstance):
            value.dispose()
        elif type(value).__name__ == "ScriptedBatchServer":  # by name: its module needs the local extra
            value.stop()
    folder, cwd, environment = namespace.pop("_page")
    namespace.pop("scripted_server").stop()
    os.chdir(cwd)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), SkipParser()],
    patterns=["*.md"],
    excludes=["CHANGELOG.md"],
    setup=_start_page,
    teardown=_end_page,
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_PAGES and item.path.parent.name == "guides":
            item.add_marker(pytest.mark.slow)
