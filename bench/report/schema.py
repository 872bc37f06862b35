"""The result documents' JSON Schema (results/schema/results.schema.json) and a
small validator for the subset of JSON Schema it uses (no extra dependency).

``bench.report.results.write`` validates every document before writing it, so the
writers and the documented format cannot drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness import paths

SCHEMA_PATH = Path(paths.RESULTS) / "schema" / "results.schema.json"


def load() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


#: What validate() implements; the schema may use nothing else (so nothing is silently ignored).
KEYWORDS = {"$schema", "$defs", "$ref", "title", "description", "type", "const", "enum", "required",
            "properties", "additionalProperties", "items", "anyOf", "minimum", "maxProperties"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, name: str) -> bool:
    if name in ("integer", "number"):
        kinds = int if name == "integer" else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _equal(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def validate(value, schema: dict, root: dict | None = None, where: str = "$") -> list[str]:
    """Errors of *value* against a JSON Schema using only KEYWORDS ([] when valid)."""
    root = root if root is not None else schema
    errors: list[str] = []
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errors += validate(value, target, root, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return errors + [f"{where}: {type(value).__name__} is not {' or '.join(types)}"]
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        errors.append(f"{where}: {value!r} < {schema['minimum']}")
    if "anyOf" in schema and all(validate(value, s, root, where) for s in schema["anyOf"]):
        errors.append(f"{where}: matches no alternative")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", ()) if k not in value]
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(f"{where}: more than {schema['maxProperties']} properties")
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], root, f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], root, f"{where}[{i}]")
    return errors


def keywords(schema) -> set[str]:
    """Keywords used anywhere in *schema* (property names and $defs names excluded)."""
    if isinstance(schema, list):
        return set().union(*map(keywords, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for sub in value.values():
                found |= keywords(sub)
        elif key in ("items", "additionalProperties", "anyOf"):
            found |= keywords(value)
    return found
