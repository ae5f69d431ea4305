"""The API key never leaks; personal data is masked in what the library records when asked."""

import dagster as dg
import pandas as pd

from llm_assets import OpenAIResource, build_chat_answers_asset
from llm_assets.redaction import mask_secrets, redact
from llm_assets_tests.support import event_of, failure_message, metadata_values

KEY = "sk-proj-SECRETvalue0123456789abcdefABCDEF"


@dg.asset
def prompts() -> pd.DataFrame:
    return pd.DataFrame({"text": ["Contact ana@example.org or +1 415 555 0100 about order 7", "Plain question"]})


answers = build_chat_answers_asset(key="answers", upstream=prompts, text_column="text", prompt="{text}")


def everything_recorded(instance, run_id, capfd) -> str:
    """Event log (messages, metadata, errors), the run record and config, stdout/stderr."""
    captured = capfd.readouterr()
    parts = [str(entry) for entry in instance.all_logs(run_id)]
    run = instance.get_run_by_id(run_id)
    parts += [str(run), str(run.run_config), str(instance.get_job_snapshot(run.job_snapshot_id))]
    return "\n".join([*parts, captured.out, captured.err])


def test_the_key_appears_nowhere_after_success_or_failure(server, materialize, instance, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    resource = OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"), base_url=server.base_url)
    ok = materialize([prompts, answers], resource)
    assert ok.success
    assert all(r["body"] for r in server.stats.requests)  # the key was really sent
    assert KEY not in everything_recorded(instance, ok.run_id, capfd)

    def echo_the_key(handler, body):  # a server that repeats the Authorization header back
        handler._json(
            401,
            {"error": {"message": f"Invalid key: {handler.headers['authorization']}", "type": "invalid_request_error"}},
        )
        return True

    server.fault = echo_the_key
    config = {"ops": {"answers": {"config": {"cache": "OFF"}}}}
    failed = materialize([prompts, answers], resource, run_config=config, raise_on_error=False)
    assert not failed.success
    assert "HTTP 401: Error code: 401 - Invalid key: Bearer [secret]" in failure_message(failed)
    assert KEY not in everything_recorded(instance, failed.run_id, capfd)


def test_redact_text_masks_personal_data_in_previews(server, materialize):
    resource = OpenAIResource(base_url=server.base_url, redact_text=True)
    result = materialize([prompts, answers], resource)
    preview = metadata_values(event_of(result, "answers"))["preview"]
    assert "ana@example.org" not in preview and "555 0100" not in preview
    assert "[email]" in preview and "[phone]" in preview
    # the data itself is not altered: only what the library logs
    assert "ana@example.org" in result.output_for_node("answers")["prompt"].iloc[0]


def test_redaction_rules():
    assert mask_secrets(f"key {KEY} and again {KEY[:20]}", KEY) == "key [secret] and again [secret]"
    assert redact("write to bob.smith@corp.example.com") == "write to [email]"
    assert redact("call (415) 555-0100 today") == "call [phone] today"
    assert redact("order 7 shipped in 2026") == "order 7 shipped in 2026"  # short numbers stay


def test_the_session_settings_and_session_never_show_the_key_or_the_budget_url(server):
    secret_url = "postgresql://user:hunter2-secret@127.0.0.1:9/budgets"
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url, budget_url=secret_url)
    settings = resource.session_settings()
    assert settings.client_kwargs["api_key"] == KEY  # what the clients are given…
    shown = f"{settings!r} {settings} {resource!r}"
    assert KEY not in shown and "hunter2" not in shown  # …is never shown
