"""The install matrix's times, printed in the terminal summary of a run that built it,
also when a pytest-xdist worker built it (handed to the controller as worker output).

These are hooks of the suite's root ``conftest.py``, which imports them: under xdist the
controller collects nothing, so it never loads this folder's conftest files.
"""

import pytest

from llm_assets_tests.packaging.matrix import MATRICES, Matrix

#: Lines the xdist workers reported.
FROM_WORKERS: list[str] = []


def report(matrix: Matrix) -> list[str]:
    lines = [f"builds and the llama-cpp-python wheel: {matrix.build_seconds:.0f} s"]
    for (install_set, source), cell in matrix.cells.items():
        outcome = "passed" if cell.returncode == 0 else "FAILED"
        lines.append(
            f"{install_set:>8} from the {source:<5}  install {cell.install_seconds:5.1f} s  "
            f"smoke {cell.smoke_seconds:5.1f} s  {outcome}: " + "; ".join(cell.passed)
        )
    return [*lines, f"whole matrix: {matrix.seconds:.0f} s"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # set on an xdist worker
    if workeroutput is not None:
        workeroutput["install_matrix"] = [line for matrix in MATRICES for line in report(matrix)]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    FROM_WORKERS.extend(node.workeroutput.get("install_matrix", []))


def pytest_terminal_summary(terminalreporter) -> None:
    lines = FROM_WORKERS + [line for matrix in MATRICES for line in report(matrix)]
    if lines:
        terminalreporter.section("install matrix")
        for line in lines:
            terminalreporter.write_line(line)
