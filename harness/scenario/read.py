"""Scenario text → decoded documents: plain dicts and lists, ``None`` for an
empty document.  Owns the document stream only; what the documents mean is
harness.scenario.build's.

A stream whose documents are all one-line JSON objects (what the templates in
``bench/scenarios`` emit; JSON is YAML) is read with the ``json`` module
(``json_documents``, which raises ``NotJson`` on anything else): PyYAML, even
with ``CSafeLoader``, needs over a minute for 100,000 services.  Anything else
goes through PyYAML (``yaml_documents``: ``CSafeLoader`` when available) with
duplicate mapping keys rejected; its syntax errors become one-line
``ScenarioError``s with the line and column.  Empty documents are yielded as
``None`` so they still count in the 1-based document index.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from harness.scenario.errors import ScenarioError


_YamlBase: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_YamlBase):  # type: ignore[misc, valid-type]
    """Safe loader (C-accelerated when available) that rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


_DOC_START = re.compile(r"^---[ \t\r]*$", re.M)


class NotJson(Exception):
    """The stream is not made of one-line JSON documents: read it as YAML instead."""


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise NotJson("duplicate key")  # the YAML path reports it with a line number
    return d


def _json_constant(name: str) -> Any:
    raise NotJson(name)  # NaN/Infinity are not YAML


def _comment_only(chunk: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in chunk.splitlines())


def _json_document(chunk: str) -> Any:
    body = chunk.strip()
    if not body or (body[0] == "#" and _comment_only(body)):
        return None
    if body[0] != "{":
        raise NotJson("not a JSON object")
    try:
        return json.loads(body, object_pairs_hook=_json_pairs, parse_constant=_json_constant)
    except (ValueError, RecursionError):
        raise NotJson("invalid JSON") from None


def json_documents(text: str) -> Iterator[Any]:
    """The documents of *text*, lazily, if each is a JSON object; raises NotJson otherwise.

    Document boundaries are lines that are exactly ``---``; an empty document
    after a ``---`` yields None (and counts), an empty preamble does not.
    """
    pos = 0
    for match in _DOC_START.finditer(text):
        doc = _json_document(text[pos:match.start()])
        if pos or doc is not None:
            yield doc
        pos = match.end()
    doc = _json_document(text[pos:])
    if pos or doc is not None:
        yield doc


def _yaml_error(err: yaml.YAMLError, text: str, source: str) -> ScenarioError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        char = chr(err.character) if isinstance(err.character, int) else err.character
        return ScenarioError(f"invalid YAML: unacceptable character {char!r}", source=source, line=line)
    if mark is None:
        return ScenarioError(f"invalid YAML: {problem or err}", source=source)
    return ScenarioError(f"invalid YAML: {problem or err}", source=source, line=mark.line + 1, column=mark.column + 1)


def yaml_documents(text: str, source: str) -> Iterator[Any]:
    loader = _StrictLoader(text)
    try:
        while True:
            try:
                if not loader.check_data():
                    return
                doc = loader.get_data()
            except yaml.YAMLError as err:
                raise _yaml_error(err, text, source) from None
            except RecursionError:
                raise ScenarioError("invalid YAML: nesting too deep", source=source) from None
            yield doc
    finally:
        loader.dispose()
