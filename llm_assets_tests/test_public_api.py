"""The public API: ``llm_assets.__all__`` is the curated list, each name documented (in its
own docstring and in the package's); the old names still import, with a
``DeprecationWarning`` naming the new import; ``import *`` warns about nothing; the errors
form one tree under ``LLMAssetsError``."""

import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import llm_assets
import llm_assets.assets
import llm_assets.engine
from llm_assets import errors

#: The public names: factories (and what they take and return), resources, run configs and
#: the enums of their fields, the translator, the I/O managers, the vector store, reading an
#: output, errors.
CURATED = [
    "AssetOptions",
    "BatchSettings",
    "CacheMode",
    "ChatConfig",
    "ChatTranslator",
    "CheckRule",
    "ConfigurationError",
    "EmbeddingConfig",
    "ErrorPolicy",
    "GovernanceError",
    "HookError",
    "IndexSettings",
    "InvalidOutputError",
    "LLMAssetsError",
    "LLMPipeline",
    "LLMRequestError",
    "LanceDBIOManager",
    "OpenAIResource",
    "PartitionedFilesystemIOManager",
    "PlotConfig",
    "RequestMode",
    "ResponseFormatStyle",
    "Retrieval",
    "SearchConfig",
    "Upstream",
    "UsageTargetError",
    "VectorStore",
    "build_batch_sensor",
    "build_chat_answers_asset",
    "build_embeddings_asset",
    "build_llm_pipeline_assets",
    "build_pca_plot_asset",
    "build_search_asset",
    "embedding_matrix",
    "with_usage_metadata",
]

#: Old names of ``llm_assets`` → where they are imported from now (module, name).
MOVED = {
    "ChatRequest": ("llm_assets.engine", "ChatRequest"),
    "Engine": ("llm_assets.engine", "Engine"),
    "OutputSchema": ("llm_assets.engine", "OutputSchema"),
    "RunSession": ("llm_assets.engine", "RunSession"),
    "Usage": ("llm_assets.engine", "Usage"),
    "vectors": ("llm_assets", "embedding_matrix"),
}

ERRORS = ["LLMAssetsError", *(n for n in CURATED if n.endswith("Error") and n != "LLMAssetsError")]


def own_docstring(value: object) -> str:
    """The docstring ``value`` has itself (a class's, not one it inherits)."""
    doc = vars(value).get("__doc__") if isinstance(value, type) else getattr(value, "__doc__", None)
    return (doc or "").strip()


def test_all_is_the_curated_list():
    assert llm_assets.__all__ == CURATED
    assert not set(MOVED) & set(llm_assets.__all__)


@pytest.mark.parametrize("name", CURATED)
def test_every_public_name_has_a_docstring(name):
    assert own_docstring(getattr(llm_assets, name)), f"llm_assets.{name} has no docstring"


def test_the_package_docstring_lists_each_public_name_with_one_line():
    listed = re.findall(r"^- ``(\w+)``: \S.*$", llm_assets.__doc__, re.MULTILINE)
    assert sorted(listed) == sorted(CURATED)  # each once, none missing


def test_the_engine_exports_its_names_documented():
    engine = llm_assets.engine
    assert sorted(engine.__all__) == engine.__all__
    for name in engine.__all__:
        assert own_docstring(getattr(engine, name)), f"llm_assets.engine.{name} has no docstring"
        assert f"``{name}``" in engine.__doc__, name
    assert {new for module, new in MOVED.values() if module == "llm_assets.engine"} <= set(engine.__all__)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_name_still_imports_with_a_warning_naming_the_new_import(old):
    module, new = MOVED[old]
    expected = getattr(sys.modules[module], new)
    with pytest.warns(DeprecationWarning, match=re.escape(f"`from {module} import {new}`")) as caught:
        namespace: dict = {}
        exec(f"from llm_assets import {old}", namespace)  # the statement users have
    assert namespace[old] is expected
    assert {Path(w.filename).name for w in caught} == {"<string>"}  # the warning points at the import
    with pytest.warns(DeprecationWarning, match=f"llm_assets.{old} is deprecated"):
        assert getattr(llm_assets, old) is expected


def test_vectors_is_embedding_matrix_under_its_old_name_in_the_assets_package_too():
    with pytest.warns(DeprecationWarning, match="use embedding_matrix"):
        assert llm_assets.assets.vectors is llm_assets.embedding_matrix
    assert "vectors" not in llm_assets.assets.__all__


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Enigne'"):
        llm_assets.Enigne  # noqa: B018
    assert not hasattr(llm_assets, "DEPRECATED")


def test_import_star_gives_the_public_names_and_no_warning():
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec("from llm_assets import *", namespace)
    assert caught == []
    assert sorted(n for n in namespace if not n.startswith("__")) == sorted(CURATED)


def test_importing_the_library_and_its_examples_warns_about_no_old_name():
    """A fresh interpreter: nothing in the library (nor the examples, nor the component) uses
    a deprecated name."""
    script = (
        "import llm_assets, llm_assets.engine, llm_assets.assets, llm_assets.components\n"
        "import llm_assets.examples.reviews\n"
        "from llm_assets import *\n"
    )
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-W", "error:llm_assets.:DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_errors_form_one_tree_under_llm_assets_error():
    root = llm_assets.LLMAssetsError
    assert root.__bases__ == (Exception,)
    exported = {name: getattr(llm_assets, name) for name in ERRORS}
    assert set(exported) == {
        "LLMAssetsError",
        "ConfigurationError",
        "UsageTargetError",
        "LLMRequestError",
        "GovernanceError",
        "HookError",
        "InvalidOutputError",
    }
    defined = [v for v in vars(errors).values() if inspect.isclass(v) and issubclass(v, BaseException)]
    ours = [cls for cls in defined if cls.__module__ == errors.__name__]
    assert ours and all(issubclass(cls, root) for cls in ours)  # every error of the library, exported or not
    assert {cls for cls in exported.values() if cls is not root and root not in cls.__bases__} == {
        llm_assets.UsageTargetError,  # a ConfigurationError
        llm_assets.GovernanceError,  # an LLMRequestError
    }
    assert issubclass(llm_assets.UsageTargetError, llm_assets.ConfigurationError)
    assert issubclass(llm_assets.GovernanceError, llm_assets.LLMRequestError)
    assert llm_assets.engine.LLMRequestError is llm_assets.LLMRequestError  # one class, two import paths
