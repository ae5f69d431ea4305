"""Which budget a step's session keeps its spending in: the run's, in a database every
step of the run reaches, when the resource has a budget and there is one.

Examples:
    >>> run_budget(budget_url=None, instance=None, run_id="r1", limits=(1000, None), backend="b", ttl=60) is None
    True
"""

import hashlib
import json
import os

import dagster as dg

from llm_assets.accounting.budgets import SharedBudget
from llm_assets.errors import ConfigurationError


def run_budget(
    *,
    budget_url: str | None,
    instance: dg.DagsterInstance | None,
    run_id: str | None,
    limits: tuple[int | None, float | None],
    backend: str,
    ttl: float,
) -> SharedBudget | None:
    """The run's ``SharedBudget`` for a resource with ``limits`` (max tokens, max USD)
    on ``backend``: ``None`` (this process keeps it) without a budget or a run, or without
    a database all the run's processes reach (said once, at set-up). Resources with the
    same backend and limits share one budget in a run; others have their own."""
    if limits == (None, None) or not run_id:
        return None
    url = budget_url or instance_budget_url(instance)
    if url is None:
        if instance is not None and not instance.is_ephemeral:
            dg.get_dagster_logger("llm_assets").warning(
                "max_tokens_per_run / max_cost_usd_per_run hold per step here: this Dagster instance's storage "
                "is neither SQLite nor Postgres. Set OpenAIResource(budget_url=...) to a database every step "
                "reaches to make them hold for the whole run."
            )
        return None
    which = hashlib.sha256(json.dumps([backend, *limits]).encode()).hexdigest()[:12]
    try:
        return SharedBudget(url, scope=f"run:{run_id}:{which}", ttl=ttl)
    except Exception as error:  # SQLAlchemy's errors: name the field, never the URL (it may hold a password)
        field = "budget_url" if budget_url else "the Dagster instance's storage"
        raise ConfigurationError(
            f"The run's budget can't be kept in {field} ({type(error).__name__}): check that the database is "
            "reachable, or set OpenAIResource(budget_url=...) to one that is."
        ) from None


def instance_budget_url(instance: object | None) -> str | None:
    """The database a Dagster instance's steps all reach: its Postgres storage, or a SQLite
    file next to its SQLite storage; ``None`` for an in-memory (ephemeral) instance or a
    storage without SQL access (Dagster+), where a budget can only be per process."""
    if instance is None or getattr(instance, "is_ephemeral", True):
        return None
    storage = getattr(instance, "run_storage", None)
    if (postgres_url := getattr(storage, "postgres_url", None)) is not None:
        return postgres_url
    if type(storage).__name__ == "SqliteRunStorage":
        folder = os.path.join(instance.storage_directory(), "llm_assets")  # type: ignore[attr-defined]
        os.makedirs(folder, exist_ok=True)
        return f"sqlite:///{os.path.join(folder, 'budgets.db')}"
    return None
