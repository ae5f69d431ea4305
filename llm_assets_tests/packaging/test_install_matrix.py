"""Each install set, installed from the wheel and from the sdist into a fresh venv, passes
its own smoke test outside the repository (see :mod:`.matrix` and :mod:`.smoke`)."""

import re
import tarfile
import zipfile
from importlib.metadata import version

import pytest

from llm_assets_tests.packaging.install_sets import SETS
from llm_assets_tests.packaging.matrix import MATRICES, Matrix, run_matrix

# Builds, eight venvs, servers and dagster processes: about 4 minutes, on one xdist worker
# (scripts/test runs --dist loadfile), which builds the matrix once for this module's tests.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Matrix:
    matrix = run_matrix(tmp_path_factory.mktemp("matrix"))
    MATRICES.append(matrix)  # its times, in the terminal summary
    return matrix


@pytest.mark.parametrize("source", ["wheel", "sdist"])
@pytest.mark.parametrize("install_set", SETS)
def test_install_set_passes_its_smoke_test(matrix, install_set, source):
    cell = matrix.cells[install_set, source]
    assert cell.returncode == 0, cell.output[-6000:]
    assert re.search(r"^all \d+ checks passed$", cell.output, re.MULTILINE), cell.output[-6000:]


def test_the_wheel_from_the_sdist_is_the_wheel_from_the_checkout(matrix):
    with (
        zipfile.ZipFile(matrix.dists.wheel_from_sdist) as built,
        zipfile.ZipFile(matrix.dists.wheel_from_checkout) as direct,
    ):
        assert sorted(built.namelist()) == sorted(direct.namelist())
        assert all(built.read(name) == direct.read(name) for name in built.namelist())


def test_the_wheel_holds_the_package_only(matrix):
    with zipfile.ZipFile(matrix.dists.wheel_from_sdist) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"llm_assets", f"llm_assets-{version('llm-assets')}.dist-info"}, tops
    assert "llm_assets/py.typed" in names and "llm_assets/extras.py" in names
    assert not [n for n in names if n.endswith((".png", ".pyc")) or "tests" in n or "benchmarks" in n]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_sdist_carries_what_a_packager_needs(matrix):
    with tarfile.open(matrix.dists.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "llm_assets/py.typed"):
        assert needed in names, needed
    assert "llm_assets_tests/packaging/smoke.py" in names and "llm_assets_tests/conftest.py" in names
    assert not [n for n in names if n.startswith(("benchmarks/", "docs/", ".venv", ".git/")) or "__pycache__" in n]
