"""OpenAIResource: drop-in compatibility with dagster-openai, configuration errors, secrets."""

import dagster as dg
import dagster_openai
import pydantic
import pytest

from llm_assets import LLMAssetsError, OpenAIResource
from llm_assets_tests.support import failure_message

KEY = "sk-test-SECRET-0123456789abcdef"


def test_is_a_drop_in_superset_of_dagster_openai():
    assert issubclass(OpenAIResource, dagster_openai.OpenAIResource)
    assert set(dagster_openai.OpenAIResource.model_fields) <= set(OpenAIResource.model_fields)
    for name in ("get_client", "get_client_for_asset"):
        assert callable(getattr(OpenAIResource, name))
    for name, field in OpenAIResource.model_fields.items():
        assert field.description, f"field {name} has no description"


def test_every_public_name_of_dagster_openai_imports_from_llm_assets():
    import llm_assets

    # what dagster-openai exports for its users (it has no __all__): every callable but its plumbing
    plumbing = {"DagsterLibraryRegistry", "resources", "version"}
    public = sorted(n for n in dir(dagster_openai) if not n.startswith("_") and n not in plumbing)
    assert public == ["OpenAIResource", "with_usage_metadata"]  # a new name fails here: export it too
    assert all(name in llm_assets.__all__ and callable(getattr(llm_assets, name)) for name in public)


def test_dagster_openai_style_code_only_changes_its_import(server, materialize):
    @dg.asset(compute_kind="OpenAI")
    def openai_asset(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            client.chat.completions.create(
                model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Say this is a test"}]
            )

    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    assert materialize([openai_asset], resource).success


def test_missing_api_key_names_openai_api_key(materialize, instance):
    @dg.asset
    def needs_key(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context):
            pass

    result = materialize([needs_key], OpenAIResource(), raise_on_error=False)
    assert not result.success
    message = "\n".join(str(entry.dagster_event) for entry in instance.all_logs(result.run_id))
    assert "OPENAI_API_KEY" in message


def test_missing_api_key_error_from_setup():
    with pytest.raises(LLMAssetsError, match="No OpenAI API key: set the OPENAI_API_KEY"):
        OpenAIResource().setup_for_execution(dg.build_init_resource_context())


def test_empty_key_counts_as_missing():
    with pytest.raises(LLMAssetsError, match="OPENAI_API_KEY"):
        OpenAIResource(api_key="   ").setup_for_execution(dg.build_init_resource_context())


def test_key_from_the_environment(monkeypatch, server):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    resource = OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"))
    with (
        dg.build_resources({"openai": resource}) as built,
        built.openai.get_client(dg.build_op_context()) as client,
    ):
        assert client.api_key == KEY
        assert str(client.base_url).startswith(server.base_url)


def test_base_url_without_key_needs_no_key(server):
    resource = OpenAIResource(base_url=server.base_url)
    with (
        dg.build_resources({"openai": resource}) as built,
        built.openai.get_client(dg.build_op_context()) as client,
    ):
        client.embeddings.create(model="text-embedding-3-small", input=["ok"])
    assert server.usage.calls == 1


def set_up(resource: OpenAIResource) -> None:
    resource.setup_for_execution(dg.build_init_resource_context())


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.org", "127.0.0.1", "http:///v1"])
def test_malformed_base_url_is_a_clear_error(url):
    with pytest.raises(LLMAssetsError, match=r"base_url .* is not an http\(s\) URL"):
        set_up(OpenAIResource(api_key=KEY, base_url=url))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8O80/v1",
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1:0/v1",
        "http://exa mple.org/v1",
        "http://[::1/v1",
    ],
)
def test_the_whole_base_url_is_validated_at_set_up(url, monkeypatch):
    with pytest.raises(LLMAssetsError, match=r"^base_url .* is not a valid URL \(.+\): set OpenAIResource\(base_url"):
        set_up(OpenAIResource(api_key=KEY, base_url=url))
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # the same check, naming where the URL came from
    with pytest.raises(LLMAssetsError, match=r"^OPENAI_BASE_URL .* is not a valid URL"):
        set_up(OpenAIResource(api_key=KEY))


def test_credentials_in_a_bad_url_are_not_shown():
    with pytest.raises(LLMAssetsError) as raised:
        set_up(OpenAIResource(api_key=KEY, base_url="http://user:hunter2@127.0.0.1:8O80/v1"))
    assert "hunter2" not in str(raised.value) and "//***@" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:hunter2@127.0.0.1:8000/v1", "holds credentials: remove them from the URL"),
        ("http://127.0.0.1:8000/v1?api-version=1", "has a query string or fragment"),
        ("http://127.0.0.1:8000/v1#section", "has a query string or fragment"),
        ("http://127.0.0.1:8000/v1?", "has a query string or fragment"),
    ],
)
def test_base_url_parts_the_client_cannot_use_are_refused(url, message):
    with pytest.raises(LLMAssetsError, match=message) as raised:
        set_up(OpenAIResource(api_key=KEY, base_url=url))
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com/v1/",
        "https://eu.api.openai.com/v1",
        "https://API.OPENAI.COM./v1",
    ],
)
def test_openai_itself_never_goes_without_a_key(url):
    with pytest.raises(LLMAssetsError, match="No OpenAI API key"):
        set_up(OpenAIResource(base_url=url))
    with pytest.raises(LLMAssetsError, match="No OpenAI API key"):
        set_up(OpenAIResource(api_key="", base_url=url))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"api_key": "sk-abc\ndef"}, "api_key"),
        ({"api_key": "sk-abc\u200bdef"}, "api_key"),  # a zero-width space pasted with the key
        ({"organization": "org-é"}, "organization"),
        ({"project": "proj\r\nX-Evil: 1"}, "project"),
        ({"default_headers": {"X-Team": "données"}}, "default_headers['X-Team']"),
        ({"default_headers": {"X Team": "data"}}, "default_headers has the name 'X Team'"),
        ({"chat_model": " "}, "chat_model"),
        ({"embedding_model": ""}, "embedding_model"),
        ({"chat_model": "gpt\udcff"}, "chat_model holds '\\udcff'"),
    ],
)
def test_fields_http_cannot_carry_fail_at_set_up_naming_the_field(server, fields, named):
    resource = OpenAIResource(**{"api_key": KEY, "base_url": server.base_url, **fields})
    with pytest.raises(LLMAssetsError) as raised:
        set_up(resource)
    assert str(raised.value).startswith(named)
    assert "sk-abc" not in str(raised.value)  # a key is never shown, even a broken one
    assert server.stats.requests == []


def test_timeout_retries_and_headers_reach_the_client(server):
    resource = OpenAIResource(
        api_key=KEY, base_url=server.base_url, timeout=7.5, max_retries=5, default_headers={"X-Team": "data"}
    )
    with (
        dg.build_resources({"openai": resource}) as built,
        built.openai.get_client(dg.build_op_context()) as client,
    ):
        assert client.timeout == 7.5 and client.max_retries == 5
        assert client.default_headers["X-Team"] == "data"


def test_api_key_never_appears_in_repr_metadata_or_logs(server, materialize, instance, capsys):
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    assert KEY not in repr(resource) and KEY not in str(resource)

    @dg.asset
    def talk(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            return (
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
                .choices[0]
                .message.content
            )

    result = materialize([talk], resource)
    assert result.success
    seen = [str(e) for e in instance.all_logs(result.run_id)]
    captured = capsys.readouterr()
    assert not any(KEY in s for s in [*seen, captured.out, captured.err])


def test_step_failure_message_helper_is_used_for_user_errors(server, materialize):
    @dg.asset
    def fails(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        raise LLMAssetsError("clear message")

    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    result = materialize([fails], resource, raise_on_error=False)
    assert "clear message" in failure_message(result)


@pytest.mark.parametrize(("variable", "field"), [("OPENAI_ORG_ID", "organization"), ("OPENAI_PROJECT_ID", "project")])
def test_organization_and_project_from_the_environment_are_checked_too(server, monkeypatch, variable, field):
    monkeypatch.setenv(variable, "org-é\nX")
    with pytest.raises(LLMAssetsError, match=rf"^{field} \({variable}\) holds a character that HTTP headers"):
        set_up(OpenAIResource(api_key=KEY, base_url=server.base_url))
    monkeypatch.setenv(variable, "org-fine")
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    assert resource.client_kwargs()[field] == "org-fine"  # what the SDK would have read itself


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"m": {"input": float("nan")}}, r"prices\['m'\]\['input'\] is nan: give a finite"),
        ({"m": {"input": -1.0}}, r"prices\['m'\]\['input'\] is -1.0"),
        ({"m": {"output": 1.0}}, r"prices\['m'\] has \['output'\]: give 'input'"),
        ({"m": {"input": 1.0, "per_call": 2.0}}, r"prices\['m'\] has \['input', 'per_call'\]"),
    ],
)
def test_prices_that_would_defeat_a_budget_fail_at_set_up(server, prices, message):
    with pytest.raises(LLMAssetsError, match=message):
        set_up(OpenAIResource(api_key=KEY, base_url=server.base_url, prices=prices, max_cost_usd_per_run=1.0))


@pytest.mark.parametrize(
    "fields", [{"timeout": float("inf")}, {"max_cost_usd_per_run": float("nan")}, {"tokens_per_minute": 10**400}]
)
def test_numbers_no_client_can_use_are_refused_by_the_config_schema(fields):
    with pytest.raises(pydantic.ValidationError, match=next(iter(fields))):
        OpenAIResource(api_key=KEY, **fields)


@pytest.mark.parametrize("cache", ["use", "REFRESH", True, False])
def test_get_client_takes_a_cache_mode_by_name(server, cache):
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url, cache_dir="memory://get-client-cache")
    with resource.get_client(dg.build_op_context(), cache=cache) as client:
        client.embeddings.create(model="e", input=["a"])


@pytest.mark.parametrize("cache", [None, 1, "sometimes"])
def test_get_client_refuses_an_unknown_cache_mode_before_sending(server, cache):
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    with (
        pytest.raises(LLMAssetsError, match=r"cache=.*: pass True, False or a llm_assets.CacheMode"),
        resource.get_client(dg.build_op_context(), cache=cache),
    ):
        pass
    assert server.stats.requests == []


def test_get_client_for_a_partition_outside_the_run_fails_before_sending(server, materialize):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
    def ask(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context, partition_key="z") as client:
            client.embeddings.create(model="e", input=["x"])

    result = materialize(
        [ask], OpenAIResource(api_key=KEY, base_url=server.base_url), partition_key="a", raise_on_error=False
    )
    assert "partition_key 'z' is not a partition of this run (['a'])" in failure_message(result)
    assert server.stats.requests == []


def test_the_embedded_models_batches_are_polled_often_by_default():
    from llm_assets import BatchSettings
    from llm_assets.local import LocalOpenAIResource

    # its batches finish in seconds; OpenAI's take minutes (the default)
    assert LocalOpenAIResource().batch == BatchSettings(poll_seconds=0.5, max_poll_seconds=5)
    assert OpenAIResource(base_url="http://127.0.0.1:9/v1").batch == BatchSettings()
