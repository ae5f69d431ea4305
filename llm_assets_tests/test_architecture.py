"""The package's import structure: layers that only import downwards, and no cycle between
modules or packages. Every import counts: ``TYPE_CHECKING`` blocks (a type import is a
dependency too) and imports inside functions, read from the source with ``ast``."""

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

import llm_assets

ROOT = Path(llm_assets.__file__).parent

#: Lowest first: a module may import its own layer and the layers below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("llm_assets.errors", "llm_assets.calls", "llm_assets.redaction", "llm_assets._compat", "llm_assets.extras"),
    ("llm_assets.accounting",),  # usage, prices, budgets, the governor, rate limits, the gate
    ("llm_assets.cache",),  # keys, files, valid answers, the answer store
    ("llm_assets.vector_store",),  # the vector column, the LanceDB store and its I/O manager
    ("llm_assets.http",),  # pools, bodies, the SDK contract, the exchange, transports, the direct client
    ("llm_assets.batch",),  # the Batch API runner, given its collaborators
    ("llm_assets.session",),  # one resource initialisation's parts
    ("llm_assets.engine",),  # what to ask, sent concurrently
    ("llm_assets.resource", "llm_assets.usage_metadata"),
    ("llm_assets.assets", "llm_assets.sensors", "llm_assets.local", "llm_assets.testing"),
    ("llm_assets.components",),
    ("llm_assets",),  # the curated public API
    ("llm_assets.examples",),  # written as users write: against the public API
]


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("llm_assets", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules ``name`` imports, anywhere in its source."""
    known = set(known)

    def module_of(dotted: str) -> str:  # an imported name resolves to its module, or its package
        while dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {module_of(alias.name) for alias in node.names if alias.name.startswith("llm_assets")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            if source.split(".")[0] == "llm_assets":
                found |= {module_of(f"{source}.{alias.name}") for alias in node.names}
    return found - {name}


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def layer(name: str) -> int:
    """The index of the layer ``name`` belongs to (the most specific prefix wins)."""
    best = max(
        (prefix for group in LAYERS for prefix in group if name == prefix or name.startswith(prefix + ".")), key=len
    )
    return next(index for index, group in enumerate(LAYERS) if best in group)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(name: str) -> str:
    """``llm_assets.http.direct`` -> ``llm_assets.http``; a top-level module is its own."""
    return ".".join(name.split(".")[:2])


def test_the_parser_sees_type_only_and_function_level_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llm_assets.session import RunSession\n"
        "def later():\n    from llm_assets.cache.keys import CacheMode\n"
    )
    assert imports("llm_assets.probe", source, GRAPH) == {"llm_assets.session", "llm_assets.cache.keys"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_module_that_imports_it_back():
    assert cycles(GRAPH) == []


def test_no_package_imports_a_package_that_imports_it_back():
    packages: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        if name == "llm_assets":
            continue  # the public API re-exports every package
        packages.setdefault(package_of(name), set()).update(
            package_of(target) for target in targets if package_of(target) not in (package_of(name), "llm_assets")
        )
    assert cycles(packages) == []


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_each_module_imports_only_its_own_layer_and_below(name):
    upward = sorted(target for target in GRAPH[name] if layer(target) > layer(name))
    assert upward == [], f"{name} (layer {layer(name)}) imports from higher layers: {upward}"


def test_the_request_path_never_sees_the_session_or_the_resource():
    """What sends a request takes small collaborators (a gate, an answer store, a contract),
    so it can be built and tested alone."""
    request_path = [
        name
        for name in GRAPH
        if package_of(name) in ("llm_assets.http", "llm_assets.cache", "llm_assets.accounting", "llm_assets.batch")
        or name in ("llm_assets.engine.sender", "llm_assets.engine.retries")
    ]
    reach: dict[str, set[str]] = {}

    def reachable(name: str) -> set[str]:
        if name not in reach:
            reach[name] = set()
            for target in GRAPH[name]:
                reach[name] |= {target} | reachable(target)
        return reach[name]

    for name in request_path:
        assert not reachable(name) & {"llm_assets.session", "llm_assets.resource"}, name
