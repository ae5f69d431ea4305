"""Prompt templates filled from partition keys, run config and upstream rows.

Templates use ``str.format`` placeholders. A placeholder no value is given for is an
error naming it and the names that are available, raised before anything is sent. So is a
partition key that can't fill one: empty, longer than ``MAX_PARTITION_KEY_CHARS``, or
holding control characters (a key added from the UI's "Add partition" is whatever was typed).

Examples:
    >>> template = PromptTemplate("You are Captain {captain}. {question}")
    >>> template.render({"captain": "Picard", "question": "Tea?"}, where="prompt")
    'You are Captain Picard. Tea?'
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import dagster as dg

from llm_assets.errors import ConfigurationError


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
            raise ConfigurationError(f"Template {self.template!r} is not a valid template ({error}): {hint}.") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name or not name.isidentifier() or spec or conversion:
                shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                raise ConfigurationError(
                    f"Template {self.template!r} has a placeholder {{{shown}}} that is not a plain name "
                    f"(no format specs or conversions): {hint}."
                )
            names.add(name)
        return frozenset(names)

    def check(self, available: set[str], where: str) -> None:
        """Raise if a placeholder can never be filled from ``available`` names."""
        missing = sorted(self.fields - available)
        if missing:
            raise ConfigurationError(
                f"{where} uses {', '.join('{' + m + '}' for m in missing)} but only "
                f"{', '.join('{' + a + '}' for a in sorted(available)) or 'no placeholders'} can be "
                "filled: rename the placeholder, or give it a value in the factory's `variables={...}` "
                "(run config `variables` can then change it)."
            )

    def render(self, values: Mapping[str, object], where: str) -> str:
        self.check(set(values), where)
        return self.template.format_map({k: values[k] for k in self.fields})


#: The longest partition key (or dimension of a multi-partition key) that fills a prompt: a
#: name or a topic, not a text (texts come from upstream rows or run config ``variables``).
MAX_PARTITION_KEY_CHARS = 200
#: Unicode categories a key may not hold: control characters (newlines, tabs, NUL, escapes…)
#: and the line and paragraph separators U+2028 and U+2029.
_UNPRINTABLE = frozenset({"Cc", "Zl", "Zp"})


def check_partition_key(key: str, placeholder: str, partitions_def: dg.PartitionsDefinition | None = None) -> None:
    """Raise if partition key ``key`` can't fill ``{placeholder}``: empty (or blank), longer
    than ``MAX_PARTITION_KEY_CHARS`` characters, or holding a control character.

    Examples:
        >>> check_partition_key("Picard", "partition_key")
        >>> check_partition_key("", "partition_key")
        Traceback (most recent call last):
        ...
        llm_assets.errors.ConfigurationError: The partition key '' can't fill {partition_key}: it is empty. ...
    """
    problem = None
    if not key.strip():
        problem = "it is empty" if not key else "it is only blanks"
    elif len(key) > MAX_PARTITION_KEY_CHARS:
        problem = f"it has {len(key)} characters, more than {MAX_PARTITION_KEY_CHARS}"
    else:
        bad = next((c for c in key if unicodedata.category(c) in _UNPRINTABLE), None)
        if bad is not None:
            problem = f"it holds the control character {bad!r} at character {key.index(bad)}"
    if problem is None:
        return
    shown = key if len(key) <= 60 else key[:57] + "..."
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name:
        fix = (
            f"delete it from the dynamic partitions {partitions_def.name!r} (the asset page's menu, Delete "
            f"partitions; or instance.delete_dynamic_partition({partitions_def.name!r}, key)) and add one"
        )
    else:
        fix = "use a partition key"
    raise ConfigurationError(
        f"The partition key {shown!r} can't fill {{{placeholder}}}: {problem}. Nothing was sent: {fix} of 1 to "
        f"{MAX_PARTITION_KEY_CHARS} characters with no control characters (longer texts belong in upstream rows "
        "or run config `variables`)."
    )


def partition_values(
    partitions_def: dg.PartitionsDefinition | None, partition_key: str | None, used: Collection[str] | None = None
) -> dict[str, str]:
    """Placeholder values of one partition: ``partition_key`` and, for a multi-partition,
    each dimension by name; each that a template ``used`` (default: all) is checked with
    ``check_partition_key``.

    Examples:
        >>> partition_values(dg.DynamicPartitionsDefinition(name="captains"), "Riker")
        {'partition_key': 'Riker'}
    """
    if partition_key is None:
        return {}
    values = {"partition_key": partition_key}
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        key = partitions_def.get_partition_key_from_str(partition_key)
        dimensions = key.keys_by_dimension
        for name, value in dimensions.items():
            if used is None or name in used:
                check_partition_key(value, name, partitions_def.get_partitions_def_for_dimension(name))
        values.update(dimensions)
    if used is None or "partition_key" in used:
        check_partition_key(partition_key, "partition_key", partitions_def)
    return values


def partition_placeholders(partitions_def: dg.PartitionsDefinition | None) -> set[str]:
    if partitions_def is None:
        return set()
    names = {"partition_key"}
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        names.update(d.name for d in partitions_def.partitions_defs)
    return names
