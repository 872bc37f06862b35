"""The result documents' JSON Schema (results/schema/results.schema.json) and
its validation, by the jsonschema library (JSON Schema Draft 2020-12).

``bench.report.results.write`` validates every document before writing it, so the
writers and the documented format cannot drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from harness import paths

SCHEMA_PATH = Path(paths.RESULTS) / "schema" / "results.schema.json"


def load() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


#: The Draft 2020-12 keywords, the ones that validate and the ones that only annotate or
#: identify.  jsonschema ignores any other key, so the schema may use nothing else (a
#: misspelt keyword would silently check nothing).
KEYWORDS = set(Draft202012Validator.VALIDATORS) | {
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$vocabulary", "$comment", "$defs",
    "then", "else", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "contentEncoding", "contentMediaType", "contentSchema"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "dependentSchemas"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMAS = {"items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems",
            "contains", "propertyNames", "not", "if", "then", "else", "contentSchema"}


def _message(error: ValidationError, where: str) -> str:
    """One line: the instance path (``$.a.b[0]``, under *where*) and jsonschema's message."""
    return f"{where}{error.json_path[1:]}: {error.message}"


def _top(error: ValidationError) -> ValidationError:
    while error.parent is not None:
        error = error.parent
    return error


def validate(value, schema: dict, root: dict | None = None, where: str = "$") -> list[str]:
    """Errors of *value* against *schema* (Draft 2020-12; ``$ref`` resolved in *root*, the
    whole schema, when *schema* is a part of it), one line each naming the field, the most
    relevant one (jsonschema's best_match) first; [] when valid."""
    validator = Draft202012Validator(root if root is not None else schema)
    if root is not None and schema is not root:
        validator = validator.evolve(schema=schema)
    errors = list(validator.iter_errors(value))
    if not errors:
        return []
    first = best_match(errors)
    rest = [e for e in errors if e is not _top(first)]
    return [_message(e, where) for e in (first, *rest)]


def keywords(schema) -> set[str]:
    """Keywords used anywhere in *schema* (property names and $defs names excluded)."""
    if isinstance(schema, list):
        return set().union(*map(keywords, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in _SCHEMA_MAPS:
            for sub in value.values():
                found |= keywords(sub)
        elif key in _SCHEMA_LISTS or key in _SCHEMAS:
            found |= keywords(value)
    return found
