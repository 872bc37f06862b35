"""The one validation every command applies to a scenario it is given: the
loader's (harness.scenario.load: fields, names, node names, an empty scenario
refused) plus what the control planes refuse when they program it (the LB
frontends, harness.lb.desired; the policies, harness.policy.desired), so
``scenario check`` accepts exactly what ``up`` and the other commands accept.
Every failure is a one-line ScenarioError naming the file.

Two modes, chosen by the command (``plan_checked``): what touches the network
(``up``, ``lb apply``, ``policy apply``) needs addresses and node names inside
the project's address plan; what only renders, resolves or programs maps that
are not attached (``kube-proxy render``, ``scenario check``, ``identities``,
``test-run``, ``bench micro|control --scenario``) takes any valid ones, so a
real cluster's ``kubectl get -o yaml`` dump loads as it is."""
from __future__ import annotations

from typing import IO, Any

from harness.lb.desired import LbStateError, lb_state
from harness.policy.desired import policy_state
from harness.scenario.errors import ScenarioError
from harness.scenario.model import Scenario
from harness.scenario.load import load_scenario_text
from harness.scenario.source import read


#: What a plan-checked load adds to its refusal of a valid object outside the plan.
RENUMBER_HINT = ("a foreign cluster's objects: `chainbench up --renumber` maps its nodes and "
                 "addresses into the address plan")


def load_text(text: str, source: str, *, plan_checked: bool = True) -> Scenario:
    """Parse and fully validate scenario *text* (see the module docstring).  A plan-checked
    load refuses a valid object outside the plan in one line naming ``up --renumber``."""
    try:
        scenario = load_scenario_text(text, source, plan_checked=plan_checked)
    except ScenarioError as err:
        if not err.plan:
            raise
        raise ScenarioError(f"{err.message}; {RENUMBER_HINT}", source=err.source,
                            document=err.document, kind=err.kind, ref=err.ref, field=err.field,
                            line=err.line, column=err.column, plan=True) from None
    return check(scenario)


def load(spec: str, params: dict[str, Any] | None = None,
         stdin: IO[bytes] | None = None, *, plan_checked: bool = True) -> Scenario:
    """Read, parse and fully validate the scenario *spec* names (*plan_checked*: see
    the module docstring)."""
    return load_text(*read(spec, params, stdin), plan_checked=plan_checked)


def check(scenario: Scenario) -> Scenario:
    """What the control planes refuse when they program *scenario*, as a one-line
    ScenarioError naming its file: frontends that clash or cannot be served, policies
    using what chainbench cannot enforce.  Returns *scenario*."""
    try:
        lb_state(scenario)
    except LbStateError as err:
        raise ScenarioError(str(err), source=scenario.source) from None
    policy_state(scenario)        # raises ScenarioError naming the object and field
    return scenario
