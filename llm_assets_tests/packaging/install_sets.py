"""The install sets users get from the wheel (bare and one extra each), and what
``pyproject.toml`` declares for them."""

import re
import tomllib
from pathlib import Path

from llm_assets import extras

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]

#: The sets of the install matrix: the extra each installs (``None``: the base only).
SETS: dict[str, str | None] = {"bare": None, "local": "local", "postgres": "postgres", "ui": "ui"}


def distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement, extras kept.

    Example:
        >>> distribution("llama-cpp-python[server]>=0.3.7")
        'llama-cpp-python[server]'
        >>> distribution("uvloop>=0.19; sys_platform != 'win32'")
        'uvloop'
    """
    name = re.match(r"\s*([A-Za-z0-9._-]+(\[[^\]]*\])?)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def module_paths(extra: str) -> list[str]:
    """The files (relative to the repository) of the modules that import ``extra``'s packages."""
    return [module.replace(".", "/") + ".py" for module in extras.MODULES.get(extra, ())]
