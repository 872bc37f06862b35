"""A scenario as the command line names it: ``-f FILE`` read into text for every
command that reads one (``scenario check``, ``up``, ``lb apply``, ``policy
apply``, ``identities``, ``test-run --scenario``, ``kube-proxy render``; ``bench
macro`` through ``up``); harness.validate parses and validates it:

* ``FILE``: a YAML (or JSON) file; ``-``: standard input; ``*.j2``: a jinja2
  template (harness.scenario.templates) rendered with ``-p KEY=VALUE`` parameters
  (values read as YAML scalars: 1000, true, UDP).
* ``harness.validate.load`` = the loader's validation (harness.scenario.load: fields, names, node
  names, an empty scenario refused) plus what the control planes refuse when they
  program it (``check``: the LB frontends, harness.lb.desired; the policies,
  harness.policy.desired), so ``scenario check`` accepts exactly what ``up`` and the
  other commands accept.  Every failure is a one-line ScenarioError naming the file.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import yaml

from harness.scenario.errors import ScenarioError
from harness.scenario.templates import render_template_file

STDIN = "-"
STDIN_SOURCE = "<stdin>"


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value read as a YAML scalar); ValueError when malformed."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def is_template(spec: str) -> bool:
    return spec != STDIN and spec.endswith(".j2")


def read(spec: str, params: dict[str, Any] | None = None,
         stdin: IO[bytes] | None = None) -> tuple[str, str]:
    """The scenario text *spec* names and the name its errors carry: (text, source)."""
    params = dict(params or {})
    if is_template(spec):
        return render_template_file(spec, **params)
    if params:
        raise ScenarioError("-p parameters only apply to .j2 templates", source=_shown(spec))
    if spec == STDIN:
        data = (stdin if stdin is not None else sys.stdin.buffer).read()
        return _decode(data, STDIN_SOURCE), STDIN_SOURCE
    try:
        with open(spec, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ScenarioError(f"cannot read: {err.strerror or err}", source=spec) from None
    return _decode(data, spec), spec


def _shown(spec: str) -> str:
    return STDIN_SOURCE if spec == STDIN else spec


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScenarioError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                            source=source) from None


def materialize(spec: str, text: str, directory: str) -> str:
    """A file holding the scenario *spec* named, for processes that read it later (the
    CNI plugin, ``connectivity``): *spec* itself when it is a plain file, else *text*
    written to a new file in *directory* (removed with it by ``chainbench down``)."""
    if spec != STDIN and not is_template(spec):
        return os.path.abspath(spec)
    os.makedirs(directory, exist_ok=True)
    stem = "stdin" if spec == STDIN else Path(spec).name.removesuffix(".j2").removesuffix(".yaml")
    fd, path = tempfile.mkstemp(prefix=f"scenario-{stem}-", suffix=".yaml", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path
