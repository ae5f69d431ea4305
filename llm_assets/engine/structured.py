"""Structured outputs: a chat answer as typed fields, validated on every row.

An ``OutputSchema`` is built once per asset from a Pydantic model or a JSON Schema
dict. It gives the ``response_format`` to send (OpenAI's strict ``json_schema``, or
``json_object`` with the schema alongside for servers such as llama.cpp that reject
``json_schema``), one typed column per top-level field (nested objects and lists are kept
as Python objects in an ``object`` column), and ``OutputSchema.parse``, which raises
``InvalidOutputError`` on an answer that does not validate: the engine then asks
again, up to ``max_parse_retries`` times.

Examples:
    >>> import pydantic
    >>> class Verdict(pydantic.BaseModel):
    ...     quality: str
    ...     confidence: float
    >>> schema = OutputSchema.of(Verdict, "answers")
    >>> schema.parse('{"quality": "courage", "confidence": 0.9}')
    {'quality': 'courage', 'confidence': 0.9}
    >>> list(schema.columns)
    ['quality', 'confidence']
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import pydantic
from openai.lib._parsing import type_to_response_format_param

from llm_assets.engine.rows import AnswerRow, ColumnSpec, column_specs
from llm_assets.errors import ConfigurationError, InvalidOutputError

#: (schema type, pandas dtype) of a top-level JSON Schema type; anything else is an object.
_COLUMN_TYPES = {
    "string": ("string", "object"),
    "integer": ("int", "Int64"),
    "number": ("float", "float64"),
    "boolean": ("bool", "boolean"),
}


class ResponseFormatStyle(enum.Enum):
    """How a structured answer is asked for; it is validated the same either way."""

    JSON_SCHEMA = "json_schema"  # OpenAI's structured outputs, strict
    JSON_OBJECT = "json_object"  # JSON mode, the schema alongside (llama.cpp constrains to it)


@dataclass(frozen=True)
class OutputSchema:
    """What a structured answer must be: its name, its strict JSON Schema and, given a
    Pydantic model, the model that validates it."""

    name: str
    schema: Mapping[str, Any]
    model: type[pydantic.BaseModel] | None = None

    @classmethod
    def of(cls, response_format: Any, asset: str) -> OutputSchema:
        """The schema of a factory's ``response_format``: a Pydantic model class or a JSON
        Schema dict of an object; anything else is one clear error."""
        if isinstance(response_format, type) and issubclass(response_format, pydantic.BaseModel):
            param = type_to_response_format_param(response_format)
            spec = param["json_schema"]  # type: ignore[index]
            return _free_names(cls(spec["name"], _strict(spec["schema"], asset), response_format), asset)
        if isinstance(response_format, Mapping):
            return _free_names(cls(_name(asset), _checked(dict(response_format), asset)), asset)
        raise ConfigurationError(
            f"response_format of {asset} is a {type(response_format).__name__}: give a Pydantic model class "
            "(class Verdict(pydantic.BaseModel): ...) or a JSON Schema dict of an object."
        )

    @property
    def columns(self) -> dict[str, ColumnSpec]:
        """One column per top-level property: strings, whole numbers, numbers and booleans
        typed; nested objects and lists kept as objects."""
        columns = {}
        for name, spec in self.schema.get("properties", {}).items():
            kind, dtype = _COLUMN_TYPES.get(_json_type(spec), ("json", "object"))
            columns[name] = (kind, dtype, spec.get("description") or f"Field {name!r} of the structured answer.")
        return columns

    def response_format(self, style: ResponseFormatStyle) -> dict[str, Any]:
        """The ``response_format`` request parameter in ``style``."""
        if style is ResponseFormatStyle.JSON_OBJECT:
            return {"type": "json_object", "schema": dict(self.schema)}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": dict(self.schema), "strict": True}}

    def parse(self, content: str) -> dict[str, Any]:
        """The answer's fields (named as in the schema: a Pydantic field's alias), validated;
        ``InvalidOutputError`` says why not."""
        try:
            if self.model is not None:
                value = self.model.model_validate_json(content).model_dump(mode="json", by_alias=True)
            else:
                value = json.loads(content)
                jsonschema.validate(value, self.schema)
            return self._fits(value)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "top level"
            raise InvalidOutputError(f"{where}: {first['msg']}") from None
        except json.JSONDecodeError as error:
            raise InvalidOutputError(f"not JSON ({error.msg} at character {error.pos})") from None
        except jsonschema.ValidationError as error:
            where = ".".join(map(str, error.absolute_path)) or "top level"
            raise InvalidOutputError(f"{where}: {error.message}") from None

    def _fits(self, value: dict[str, Any]) -> dict[str, Any]:
        """``value``, checked to fit its typed columns (a whole number fits ``Int64``)."""
        for name, (kind, _, _) in self.columns.items():
            number = value.get(name)
            if kind == "int" and isinstance(number, int) and not -(2**63) <= number < 2**63:
                raise InvalidOutputError(f"{name}: {number} does not fit a 64-bit integer")
        return value


def style_hint(body: Mapping[str, Any], message: str) -> str:
    """What to set when a server's error ``message`` rejects the ``json_schema`` response
    format of the request ``body``, else ``""``."""
    response_format = body.get("response_format")
    if (
        isinstance(response_format, Mapping)
        and response_format.get("type") == "json_schema"
        and "json_schema" in message
    ):
        return (
            " (this server rejects response_format json_schema: set OpenAIResource(response_format_style="
            "ResponseFormatStyle.JSON_OBJECT), which sends the schema in JSON mode)"
        )
    return ""


def _free_names(schema: OutputSchema, asset: str) -> OutputSchema:
    """``schema``, checked to have no field whose column would overwrite one of the answers'
    own columns."""
    taken = sorted(set(schema.columns) & set(column_specs(AnswerRow)))
    if taken:
        raise ConfigurationError(
            f"The response_format of {asset} has field(s) {', '.join(taken)}, which the answers frame already "
            "has as columns: rename them in the model or schema."
        )
    return schema


def _name(asset: str) -> str:
    """A valid ``json_schema.name`` (letters, digits, ``_`` and ``-``, at most 64)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in asset)[:64] or "answer"


def _json_type(spec: Mapping[str, Any]) -> str | None:
    """The one non-null JSON type of a property (``["number", "null"]`` and
    ``anyOf: [{number}, {null}]`` are numbers), else ``None``."""
    types = spec.get("type")
    if types is None and "anyOf" in spec:
        types = [option.get("type") for option in spec["anyOf"]]
    if isinstance(types, str):
        return types
    if isinstance(types, list):
        real = [t for t in types if t != "null"]
        return real[0] if len(real) == 1 and isinstance(real[0], str) else None
    return None


def _checked(schema: dict[str, Any], asset: str) -> dict[str, Any]:
    """A JSON Schema dict checked to be a valid schema of an object that strict structured
    outputs accept."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ConfigurationError(
            f"The response_format of {asset} is not a valid JSON Schema: {error.message}."
        ) from None
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
        raise ConfigurationError(
            f"The response_format of {asset} must be the JSON Schema of an object: "
            '{"type": "object", "properties": {...}, "required": [...], "additionalProperties": false}.'
        )
    return _strict(schema, asset)


def _strict(schema: dict[str, Any], asset: str) -> dict[str, Any]:
    """``schema``, checked to be strict at every level (each object closed, with all its
    properties required), as OpenAI's strict structured outputs require."""
    problems = list(_strict_problems(schema, "top level"))
    if problems:
        raise ConfigurationError(
            f"The response_format of {asset} is not strict: {'; '.join(problems[:5])} (OpenAI's strict structured "
            "outputs require every object closed with all its properties required; make a field optional with a "
            "null type, and use a list of {key, value} objects instead of a free-form dict)."
        )
    return schema


def _strict_problems(spec: Any, where: str) -> Iterator[str]:
    """What keeps the schema ``spec`` at ``where`` from being strict, each naming its path."""
    if not isinstance(spec, Mapping):
        return
    properties = spec.get("properties")
    if isinstance(properties, Mapping):
        optional = sorted(set(properties) - set(spec.get("required", [])))
        if optional:
            yield f"{where}: list {', '.join(optional)} in 'required'"
        if spec.get("additionalProperties") is not False:
            yield f"{where}: set 'additionalProperties': false"
        for name, sub in properties.items():
            yield from _strict_problems(sub, name if where == "top level" else f"{where}.{name}")
    elif spec.get("type") == "object" or isinstance(spec.get("additionalProperties"), Mapping):
        yield f"{where}: a free-form object (no 'properties')"
    yield from _strict_problems(spec.get("items"), f"{where}[]")
    for option in spec.get("anyOf") or []:
        yield from _strict_problems(option, where)
    for name, sub in (spec.get("$defs") or spec.get("definitions") or {}).items():
        yield from _strict_problems(sub, f"$defs.{name}")
