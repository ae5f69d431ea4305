"""``llm_assets.OpenAIResource`` as a drop-in for dagster-openai: its own test suite, ported,
and the cases where this library goes further."""
