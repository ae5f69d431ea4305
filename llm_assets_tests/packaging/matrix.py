"""The install matrix: the sdist and the wheels built once with ``python -m build``, a
fresh venv per install set and distribution holding only what that set installs, and
each venv's own smoke test (:mod:`.smoke`) run outside the repository.

Two wheels: one built from the sdist (what ``python -m build`` publishes, and what a
``pip install`` of the sdist builds) and one built straight from the checkout. Venvs are
made and filled by uv, which resolves the same versions as pip (checked once by hand:
the same 89 distributions) in seconds instead of a minute; llama-cpp-python, which
compiles from source, is the one pip built for the development venv, taken from pip's
wheel cache with ``pip wheel`` (so it is built once per machine, as for users).
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from llm_assets_tests.packaging.install_sets import REPO, SETS

BIN = Path(sys.executable).parent
SMOKE = Path(__file__).with_name("smoke.py")
#: scripts/setup's portable llama.cpp build, for a machine whose pip cache lacks the wheel.
CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
#: Hang guards of one step (a build, an install, a smoke test), never timings.
STEP_LIMIT = 900


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel_from_sdist: Path
    wheel_from_checkout: Path

    def wheel(self, source: str) -> Path:
        return self.wheel_from_sdist if source == "sdist" else self.wheel_from_checkout


@dataclass
class Cell:
    """One install set from one distribution: its smoke test's output and times."""

    install_set: str
    source: str
    install_seconds: float = 0.0
    smoke_seconds: float = 0.0
    returncode: int | None = None
    output: str = ""

    @property
    def passed(self) -> list[str]:
        return [line[3:] for line in self.output.splitlines() if line.startswith("ok ")]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=STEP_LIMIT, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def source_tree(into: Path) -> Path:
    """A copy of the files git would commit (tracked, or new and not ignored), so that
    nothing lying in the checkout reaches a distribution; the whole tree outside git."""
    if (REPO / ".git").exists():
        listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
        for name in filter(None, listed.split("\0")):
            if (REPO / name).is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, into / name)
    else:
        shutil.copytree(REPO, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv*", "__pycache__"))
    return into


def build(workdir: Path) -> Distributions:
    """The sdist and the wheel built from it, then a wheel from the checkout itself."""
    tree, out, direct = source_tree(workdir / "tree"), workdir / "dist", workdir / "dist-checkout"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(tree)])
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(direct), str(tree)])
    (sdist,), (wheel,), (direct_wheel,) = out.glob("*.tar.gz"), out.glob("*.whl"), direct.glob("*.whl")
    return Distributions(sdist, wheel, direct_wheel)


def llama_wheelhouse(workdir: Path) -> Path:
    """A folder with the llama-cpp-python wheel of the development venv's version, from
    pip's wheel cache (built there once by scripts/setup)."""
    house = workdir / "wheelhouse"
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", CMAKE_ARGS)}
    requirement = f"llama-cpp-python=={version('llama-cpp-python')}"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(house), requirement], env=env)
    return house


def install(venv: Path, requirement: str, wheelhouse: Path) -> None:
    """A fresh venv at ``venv`` holding ``requirement`` and what it depends on, nothing else."""
    uv = str(BIN / "uv")
    run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    pin = venv.parent / f"{venv.name}-constraints.txt"
    pin.write_text(f"llama-cpp-python=={version('llama-cpp-python')}\n")
    command = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    run([*command, "--find-links", str(wheelhouse), "--constraint", str(pin), requirement])


def smoke(cell: Cell, dists: Distributions, wheelhouse: Path, workdir: Path, postgres_url: str | None) -> Cell:
    """Install ``cell``'s set from its distribution into a fresh venv, then run its smoke
    test there with ``python -I`` from an empty directory."""
    venv = workdir / f"venv-{cell.install_set}-{cell.source}"
    extra = SETS[cell.install_set]
    wheel = dists.wheel(cell.source)
    started = time.monotonic()
    install(venv, f"{wheel}[{extra}]" if extra else str(wheel), wheelhouse)
    cell.install_seconds = time.monotonic() - started
    home = workdir / f"smoke-{cell.install_set}-{cell.source}"
    home.mkdir()
    shutil.copy(SMOKE, home / "smoke.py")
    command = [str(venv / "bin" / "python"), "-I", "smoke.py", cell.install_set]
    if postgres_url and cell.install_set == "postgres":
        command += ["--postgres-url", postgres_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHON", "VIRTUAL_ENV", "DAGSTER_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    result = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=STEP_LIMIT)
    cell.smoke_seconds = time.monotonic() - started
    cell.returncode, cell.output = result.returncode, result.stdout + result.stderr
    return cell


@contextlib.contextmanager
def postgres_databases(names: list[str]) -> Iterator[dict[str, str]]:
    """One database per name on a throwaway PostgreSQL server (their URLs by name), or no
    URLs where PostgreSQL can't run here (the ``[postgres]`` smoke test then says so)."""
    from llm_assets_tests.scale.postgres import running_postgres

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(running_postgres())
        except pytest.skip.Exception:
            yield {}
            return
        import sqlalchemy as sa

        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        yield {name: url.rsplit("/", 1)[0] + f"/{name}" for name in names}


#: The matrices built in this session, for the terminal summary (conftest.py).
MATRICES: list["Matrix"] = []


@dataclass
class Matrix:
    dists: Distributions
    cells: dict[tuple[str, str], Cell]
    build_seconds: float
    seconds: float


def run_matrix(workdir: Path, workers: int = 2) -> Matrix:
    """Every install set from both wheels, ``workers`` cells at a time (this machine has 2 cores)."""
    started = time.monotonic()
    dists = build(workdir)
    wheelhouse = llama_wheelhouse(workdir)
    build_seconds = time.monotonic() - started
    cells = [Cell(s, source) for s in SETS for source in ("wheel", "sdist")]
    databases = [f"smoke_{source}" for source in ("wheel", "sdist")]
    with postgres_databases(databases) as urls, ThreadPoolExecutor(workers) as pool:
        done = list(
            pool.map(
                lambda c: smoke(c, dists, wheelhouse, workdir, urls.get(f"smoke_{c.source}")),
                cells,
            )
        )
    return Matrix(dists, {(c.install_set, c.source): c for c in done}, build_seconds, time.monotonic() - started)
