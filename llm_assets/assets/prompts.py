"""Prompt templates filled from partition keys, run config and upstream rows.

Templates use ``str.format`` placeholders. A placeholder no value is given for is an
error naming it and the names that are available, raised before anything is sent.

Example:
    >>> template = PromptTemplate("You are Captain {captain}. {question}")
    >>> template.render({"captain": "Picard", "question": "Tea?"}, where="prompt")
    'You are Captain Picard. Tea?'
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from llm_assets.errors import LLMAssetsError


@dataclass(frozen=True)
class PromptTemplate:
    """A ``str.format`` template with named placeholders only."""

    template: str

    @property
    def fields(self) -> frozenset[str]:
        names = set()
        hint = "use named placeholders such as {question}, and write {{ }} for literal braces"
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as error:  # a lone { or }
            raise LLMAssetsError(f"Template {self.template!r} is not a valid template ({error}): {hint}.") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name or not name.isidentifier() or spec or conversion:
                shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                raise LLMAssetsError(
                    f"Template {self.template!r} has a placeholder {{{shown}}} that is not a plain name "
                    f"(no format specs or conversions): {hint}."
                )
            names.add(name)
        return frozenset(names)

    def check(self, available: set[str], where: str) -> None:
        """Raise if a placeholder can never be filled from ``available`` names."""
        missing = sorted(self.fields - available)
        if missing:
            raise LLMAssetsError(
                f"{where} uses {', '.join('{' + m + '}' for m in missing)} but only "
                f"{', '.join('{' + a + '}' for a in sorted(available)) or 'no placeholders'} can be "
                "filled: rename the placeholder, or pass the value in run config `variables`."
            )

    def render(self, values: Mapping[str, object], where: str) -> str:
        self.check(set(values), where)
        return self.template.format_map({k: values[k] for k in self.fields})


def partition_values(partitions_def: dg.PartitionsDefinition | None, partition_key: str | None) -> dict[str, str]:
    """Placeholder values of one partition: ``partition_key`` and, for a multi-partition,
    each dimension by name."""
    if partition_key is None:
        return {}
    values = {"partition_key": partition_key}
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        key = partitions_def.get_partition_key_from_str(partition_key)
        values.update(key.keys_by_dimension)
    return values


def partition_placeholders(partitions_def: dg.PartitionsDefinition | None) -> set[str]:
    if partitions_def is None:
        return set()
    names = {"partition_key"}
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        names.update(d.name for d in partitions_def.partitions_defs)
    return names
