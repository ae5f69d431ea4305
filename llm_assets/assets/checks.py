"""The asset checks the factories generate, run in the asset's own step (``check_specs``):
they read the frame the step just built and cost no requests.

Each check counts offending rows. It passes while their share is at most its rule's
``max_rate`` (0 by default: none may offend), and its metadata gives the count, the rate
and the first few offending rows. Names are unique across the factories, so one mapping
configures a whole pipeline (``checks={"no_truncated_answers": CheckRule(max_rate=0.1)}``):

* chat answers: ``no_failed_requests``, ``no_empty_answers``, ``no_refusals``,
  ``no_truncated_answers``, ``valid_structured_answers`` (with a ``response_format``),
  ``answers_match_requests``;
* embeddings: ``one_dimension``, ``no_bad_vectors`` (NaN, infinite or zero),
  ``embeddings_match_texts``;
* PCA map: ``enough_points``, ``explained_variance`` (reported; passes).

Examples:
    >>> checks = AssetChecks(dg.AssetKey("answers"), CHAT_CHECKS, {"no_refusals": CheckRule(severity="ERROR")})
    >>> [spec.name for spec in checks.specs][:2]
    ['no_failed_requests', 'no_empty_answers']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
import pandas as pd
import pydantic

from llm_assets.assets.frames import preview
from llm_assets.errors import ConfigurationError

#: How many offending rows a check's metadata shows.
SHOWN_ROWS = 5


class CheckRule(pydantic.BaseModel, frozen=True):
    """How one generated check judges: ``enabled``, the share of rows that may offend
    (``max_rate``), its ``severity`` (``None``: the check's default) and whether a failure
    stops downstream assets of the run (``blocking``, with severity ERROR)."""

    enabled: bool = True
    max_rate: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    severity: Literal["WARN", "ERROR"] | None = None
    blocking: bool = False


#: A factory's ``checks``: all on (True), all off (False), or rules by check name (a rule,
#: ``False`` to turn one off, or a dict of ``CheckRule`` fields).
ChecksOption = bool | Mapping[str, "CheckRule | bool | Mapping[str, Any]"]


@dataclass(frozen=True)
class CheckKind:
    """One generated check: its name, what it asserts, its default severity and what to do
    when it fails."""

    name: str
    description: str
    severity: Literal["WARN", "ERROR"]
    hint: str


CHAT_CHECKS = (
    CheckKind("no_failed_requests", "Every request was answered (on_error=RECORD keeps failures as rows).", "ERROR",
              "see the error column; re-run to retry the failed rows"),
    CheckKind("no_empty_answers", "No answer is empty.", "WARN", "check the prompt and max_tokens"),
    CheckKind("no_refusals", "No answer is a refusal (message.refusal or finish_reason content_filter).", "WARN",
              "rephrase the prompt, or accept the refusals with max_rate"),
    CheckKind("no_truncated_answers", "No answer was cut at max_tokens (finish_reason length).", "WARN",
              "raise max_tokens in run config or the factory"),
    CheckKind("valid_structured_answers", "Every structured answer validated against the response_format.",
              "ERROR", "raise max_parse_retries or max_tokens, or simplify the schema"),
    CheckKind("answers_match_requests", "One row per planned request.", "ERROR", "report this as a bug"),
)  # fmt: skip
EMBEDDING_CHECKS = (
    CheckKind("one_dimension", "All of the asset's vectors have one dimension.", "ERROR",
              "re-materialize every partition with one embedding_model and dimensions"),
    CheckKind("no_bad_vectors", "No vector is NaN, infinite or all zeros.", "ERROR",
              "re-materialize those partitions (cache: REFRESH)"),
    CheckKind("embeddings_match_texts", "One vector per upstream text.", "ERROR", "report this as a bug"),
)  # fmt: skip
PLOT_CHECKS = (
    CheckKind("enough_points", "The map has at least 2 points.", "ERROR",
              "materialize more partitions of the embeddings first"),
    CheckKind("explained_variance", "Share of the variance the two axes explain (reported).", "WARN", ""),
)  # fmt: skip
ALL_CHECKS = {kind.name: kind for kind in (*CHAT_CHECKS, *EMBEDDING_CHECKS, *PLOT_CHECKS)}


class AssetChecks:
    """The checks of one asset, given its catalog of ``kinds`` and the factory's ``checks``:
    the specs to declare and the results of a frame's offending rows."""

    def __init__(
        self, key: dg.AssetKey, kinds: Sequence[CheckKind], checks: ChecksOption = True, skip: Sequence[str] = ()
    ) -> None:
        self.key = key
        chosen = _rules(kinds, checks, key)
        self.rules = {kind.name: (kind, rule) for kind, rule in chosen if kind.name not in skip}

    @property
    def specs(self) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(name, asset=self.key, description=kind.description, blocking=rule.blocking)
            for name, (kind, rule) in self.rules.items()
        ]

    def result(
        self,
        name: str,
        offending: pd.DataFrame,
        total: int,
        shown: Sequence[str] = (),
        passed: bool | None = None,
        redacted: bool = False,
        **metadata: Any,
    ) -> dg.AssetCheckResult | None:
        """The result of check ``name`` (``None`` when it is off): ``offending`` rows of
        ``total``, their ``shown`` columns in the metadata, plus ``metadata``; ``passed``
        decides instead for checks that are not about rows; their text is masked when
        ``redacted`` (the resource's ``redact_text``)."""
        if name not in self.rules:
            return None
        kind, rule = self.rules[name]
        count = len(offending)
        rate = count / total if total else 0.0
        details: dict[str, Any] = {"rows": total, **metadata}
        if passed is None:  # a check about rows: how many offend, and how many may
            passed = count == 0 or rate <= rule.max_rate
            details.update(count=count, rate=round(rate, 4), **({"max_rate": rule.max_rate} if rule.max_rate else {}))
        if count:
            rows = offending.head(SHOWN_ROWS).to_dict("records")
            details["offending_rows"] = dg.MetadataValue.md(preview(rows, shown, redacted, width=80))
        if not passed and kind.hint:
            details["fix"] = kind.hint
        return dg.AssetCheckResult(
            check_name=name,
            asset_key=self.key,
            passed=passed,
            severity=dg.AssetCheckSeverity(rule.severity or kind.severity),
            metadata=details,
        )

    def results(self, *results: dg.AssetCheckResult | None) -> list[dg.AssetCheckResult]:
        return [r for r in results if r is not None]


def checks_of(checks: ChecksOption, kinds: Sequence[CheckKind]) -> ChecksOption:
    """The part of a pipeline's ``checks`` for one asset: its ``kinds``' rules (names no
    factory generates stay, so the asset's factory reports them)."""
    if not isinstance(checks, Mapping):
        return checks
    others = set(ALL_CHECKS) - {kind.name for kind in kinds}
    return {name: rule for name, rule in checks.items() if name not in others}


def checked(
    value: Any,
    results: Sequence[dg.AssetCheckResult],
    metadata: Mapping[str, Any] | None = None,
    data_version: str | None = None,
) -> dg.MaterializeResult:
    """An asset body's return: its output ``value`` with its check results (and metadata,
    and the data version of ``value``: ``llm_assets.assets.versions``)."""
    version = dg.DataVersion(data_version) if data_version is not None else None
    return dg.MaterializeResult(value=value, check_results=list(results), metadata=metadata, data_version=version)


def _rules(kinds: Sequence[CheckKind], checks: ChecksOption, key: dg.AssetKey) -> list[tuple[CheckKind, CheckRule]]:
    """Each enabled check of ``kinds`` with its rule; a name not among them, or a rule of
    the wrong shape, is one clear error."""
    if isinstance(checks, bool):
        return [(kind, CheckRule()) for kind in kinds] if checks else []
    if not isinstance(checks, Mapping):
        raise ConfigurationError(
            f"checks of {key.to_user_string()} is a {type(checks).__name__}: give True, False or "
            '{check name: CheckRule(...) or False}, e.g. {"no_truncated_answers": CheckRule(max_rate=0.1)}.'
        )
    unknown = sorted(set(checks) - {kind.name for kind in kinds})
    if unknown:
        raise ConfigurationError(
            f"Unknown check(s) {', '.join(map(str, unknown))} in checks of {key.to_user_string()}: its factory "
            f"generates {', '.join(kind.name for kind in kinds)}."
        )
    chosen = []
    for kind in kinds:
        given = checks.get(kind.name, True)
        try:
            rule = (
                given
                if isinstance(given, CheckRule)
                else CheckRule.model_validate({"enabled": given} if isinstance(given, bool) else given)
            )
        except pydantic.ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ConfigurationError(f"checks[{kind.name!r}] of {key.to_user_string()}: {problems}.") from None
        if rule.blocking and (rule.severity or kind.severity) == "WARN":
            raise ConfigurationError(
                f"checks[{kind.name!r}] of {key.to_user_string()} is blocking at severity WARN, which Dagster never "
                "blocks on: set severity: ERROR with blocking."
            )
        if rule.enabled:
            chosen.append((kind, rule))
    return chosen


def chat_results(
    checks: AssetChecks, frame: pd.DataFrame, planned: int, run: Mapping[str, Any], redacted: bool
) -> list[dg.AssetCheckResult]:
    """The chat checks of an answers ``frame`` built from ``planned`` requests; the ``run``'s
    figures (request phase) go with the run-wide row count check."""
    from llm_assets.errors import INVALID_OUTPUT

    total, shown, none = len(frame), ["partition_key", "row", "prompt"], frame.iloc[:0]
    error = frame["error"].fillna("").astype(str)
    invalid = error.str.startswith(INVALID_OUTPUT)  # the library starts every other recorded error otherwise
    refused = frame["refusal"].notna() | (frame["finish_reason"] == "content_filter")
    empty = (error == "") & ~refused & (frame["answer"].fillna("").astype(str).str.strip() == "")
    frame = frame.assign(error=error.str.replace(r"^Request for .*? failed: ", "", n=1, regex=True))  # shown: why
    return checks.results(
        checks.result(
            "no_failed_requests", frame[(error != "") & ~invalid], total, [*shown, "error"], redacted=redacted
        ),
        checks.result("no_empty_answers", frame[empty], total, shown, redacted=redacted),
        checks.result("no_refusals", frame[refused], total, [*shown, "refusal", "finish_reason"], redacted=redacted),
        checks.result(
            "no_truncated_answers", frame[frame["finish_reason"] == "length"], total, shown, redacted=redacted
        ),
        checks.result("valid_structured_answers", frame[invalid], total, [*shown, "error"], redacted=redacted),
        checks.result("answers_match_requests", none, total, passed=total == planned, requests=planned, **run),
    )


def embedding_results(
    checks: AssetChecks,
    frame: pd.DataFrame,
    texts: int,
    dimensions: Mapping[str, int],
    run: Mapping[str, Any],
    redacted: bool,
) -> list[dg.AssetCheckResult]:
    """The embedding checks of a ``frame`` embedding ``texts`` texts; ``dimensions`` by
    partition (this run's, and the latest other partition's on record)."""
    import numpy as np

    from llm_assets.assets.frames import embedding_matrix

    matrix = embedding_matrix(frame)
    bad = (
        ~np.isfinite(matrix).all(axis=1) | ~(matrix != 0).any(axis=1) if matrix.shape[1] else np.zeros(len(frame), bool)
    )
    by_partition = ", ".join(f"{pk}: {width}" for pk, width in list(dimensions.items())[:20])
    one, none, shown = len(set(dimensions.values())) <= 1, frame.iloc[:0], ["partition_key", "row", "text"]
    return checks.results(
        checks.result("one_dimension", none, len(frame), passed=one, dimensions=by_partition),
        checks.result("no_bad_vectors", frame.loc[bad, shown], len(frame), shown, redacted=redacted),  # not the vectors
        checks.result("embeddings_match_texts", none, len(frame), passed=texts == len(frame), texts=texts, **run),
    )


def plot_results(checks: AssetChecks, points: pd.DataFrame, ratios: tuple[float, float]) -> list[dg.AssetCheckResult]:
    """The map's checks: enough points, and the variance its two axes explain."""
    explained = {"pc1": round(ratios[0], 4), "pc2": round(ratios[1], 4), "pc1_and_pc2": round(sum(ratios), 4)}
    none = points.iloc[:0]
    return checks.results(
        checks.result("enough_points", none, len(points), passed=len(points) >= 2),
        checks.result("explained_variance", none, len(points), passed=True, **explained),
    )
