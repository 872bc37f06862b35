"""Loading a scenario: a file or a text → a validated ``Scenario``.

Reads the documents (harness.scenario.read: the JSON fast path, PyYAML when
the text is not one-line JSON documents), builds them
(harness.scenario.build) with the cyclic GC paused, and refuses a scenario
without any object.  Every failure is a one-line ``ScenarioError``.
"""
from __future__ import annotations

import gc
import os

from harness.scenario.build import scenario_from_documents
from harness.scenario.errors import ScenarioError
from harness.scenario.model import Scenario
from harness.scenario.read import NotJson, json_documents, yaml_documents

__all__ = ["load_scenario", "load_scenario_text"]


class _GcPaused:
    """Pause the cyclic GC while building large object graphs (halves load time)."""

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


def load_scenario_text(text: str, source: str = "<string>", *, plan_checked: bool = True) -> Scenario:
    """Parse and validate a multi-document YAML scenario given as text.  A text
    without any object (empty, only comments or empty documents) is refused.
    *plan_checked*: addresses and node names must fit the project's address plan
    (the default; what touches the network); False: any valid ones."""
    if text.startswith("\ufeff"):
        text = text[1:]
    with _GcPaused():
        try:
            scenario = scenario_from_documents(json_documents(text), source,
                                               plan_checked=plan_checked)
        except NotJson:
            scenario = scenario_from_documents(yaml_documents(text, source), source,
                                               plan_checked=plan_checked)
    if not (scenario.pods or scenario.services or scenario.endpoint_slices or scenario.namespaces
            or scenario.network_policies or scenario.cilium_network_policies):
        skipped = f" (skipped {scenario.skipped_text()})" if scenario.skipped else ""
        raise ScenarioError("no objects: an empty scenario (expected Kubernetes objects: Pods, "
                            f"Services, ...){skipped}", source=source)
    return scenario


def load_scenario(path: str | os.PathLike[str], *, plan_checked: bool = True) -> Scenario:
    """Read, parse and validate the scenario file *path* (*plan_checked*: see
    load_scenario_text)."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ScenarioError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=source) from None
    except OSError as err:
        raise ScenarioError(f"cannot read: {err.strerror or err}", source=source) from None
    return load_scenario_text(text, source, plan_checked=plan_checked)
