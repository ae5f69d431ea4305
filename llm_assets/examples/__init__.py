"""Worked examples, each a Dagster code location."""
