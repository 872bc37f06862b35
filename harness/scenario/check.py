"""``python3 -m harness.scenario.check FILE``: validate a scenario and print a one-line summary.

Exit status 0 with a summary on stdout, or 2 with the one-line ScenarioError
on stderr (never a traceback).  A ``.j2`` file is rendered first, with
``-p KEY=VALUE`` parameters (values are read as YAML scalars: 1000, true, UDP).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from harness.scenario.errors import ScenarioError
from harness.scenario.model import Scenario
from harness.scenario.parse import load_scenario
from harness.scenario.templates import SCENARIO_DIR, load_template_scenario


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def summary(scenario: Scenario) -> str:
    """One line of counts, e.g. ``x.yaml: 3 pods on 2 nodes, 1 services, ...``."""
    return (f"{scenario.source}: {len(scenario.pods)} pods on {len(scenario.nodes)} nodes, "
            f"{len(scenario.services)} services, {len(scenario.endpoint_slices)} endpointslices, "
            f"{len(scenario.network_policies)} networkpolicies, "
            f"{len(scenario.cilium_network_policies)} ciliumnetworkpolicies")


def _load(file: str, params: dict[str, object]) -> Scenario:
    path = Path(file)
    if path.name.endswith(".j2"):
        if path.resolve().parent != SCENARIO_DIR:
            raise ScenarioError(f"templates must live in {SCENARIO_DIR}", source=file)
        return load_template_scenario(path.name, **params)
    if params:
        raise ScenarioError("-p parameters only apply to .j2 templates", source=file)
    return load_scenario(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m harness.scenario.check", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="scenario YAML, or a template in bench/scenarios/*.j2")
    parser.add_argument("-p", "--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                        help="template parameter (repeatable)")
    parser.add_argument("--endpoint", metavar="NS/POD", help="also check that this pod exists")
    args = parser.parse_args(argv)
    try:
        scenario = _load(args.file, dict(args.param))
        line = summary(scenario)
        if args.endpoint:
            pod = scenario.pod(args.endpoint)
            line += f"; endpoint {pod.ref} on {pod.node_name or 'no node'}"
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
