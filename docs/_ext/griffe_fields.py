"""A griffe extension for the API reference: a pydantic field's ``description`` becomes
its docstring and its ``default`` its value, so the reference lists a resource's or a run
config's fields with what each means and defaults to (``OpenAIResource.timeout = 120.0``:
"Seconds before one request times out.").

griffe reads the source without importing it, so a field declared as
``timeout: float = Field(default=120.0, description="...")`` otherwise has no docstring.

Examples:
    >>> import griffe
    >>> module = griffe.visit("m", filepath=None, code='class C:\\n    x: int = Field(description="An x.")',
    ...                       extensions=griffe.load_extensions(FieldDescriptions))
    >>> module["C.x"].docstring.value
    'An x.'
    >>> module = griffe.visit("m", filepath=None, code='class C:\\n    x: int = Field(default=3, ge=0)',
    ...                       extensions=griffe.load_extensions(FieldDescriptions))
    >>> module["C.x"].value
    '3'
"""

import ast
from typing import Any

import griffe


class FieldDescriptions(griffe.Extension):
    """Sets an attribute's docstring from its ``Field(description=...)`` (unless it has one)
    and its value from the field's default (none shown for a ``default_factory``)."""

    def on_attribute_instance(
        self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, **kwargs: Any
    ) -> None:
        call = getattr(node, "value", None)
        if not isinstance(call, ast.Call):
            return
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
        if name != "Field":
            return
        keywords = {keyword.arg: keyword.value for keyword in call.keywords}
        default = call.args[0] if call.args else keywords.get("default")
        attr.value = None if default is None else ast.unparse(default)
        description = keywords.get("description")
        if attr.docstring is None and isinstance(description, ast.Constant):
            attr.docstring = griffe.Docstring(str(description.value), parent=attr)
