"""``chainbench connectivity``'s choice of suite: Cilium's connectivity-check suite
(harness.topology.connectivity) on a topology of connectivity-check.yaml, the
Service feature checks (harness.topology.service_checks) on one of
service-features.yaml; either narrowed by ``--test`` patterns."""
from __future__ import annotations

from harness.errors import InputError
from harness.scenario import load_scenario
from harness.topology import connectivity, service_checks
from harness.topology.connectivity import Result
from harness.topology.state import load_state, scenario_with_real_addresses


def run_selected(patterns: list[str], datapath: str | None = None,
                 flow_validation: str = "strict", flows_path: str | None = None) -> list[Result]:
    """The checks *patterns* select (select(); none: every check) run on the topology
    that is up, against *datapath* (default: the topology's): the topology's scenario
    picks the suite (this module's, or service_checks' for service-features.yaml)."""
    state = load_state()
    suite = service_checks.CHECKS if state is not None and service_checks.applies(state) \
        else connectivity.CHECKS
    if suite is not connectivity.CHECKS and flows_path is not None:
        raise InputError("--flows: the Service feature checks are not matched with flows")
    try:
        checks = connectivity.select(suite, patterns)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not checks:
        raise InputError(f"--test {','.join(patterns)}: no check matches "
                         f"(checks: {', '.join(c.name for c in suite)})")
    if state is None:
        raise InputError("no topology is up: run `chainbench up -f "
                         "bench/scenarios/connectivity-check.yaml` first")
    scenario = scenario_with_real_addresses(load_scenario(state.scenario), state)
    if suite is not connectivity.CHECKS:
        return service_checks.run(state, scenario, datapath, checks)
    return connectivity.run(state, scenario, datapath, checks, flow_validation, flows_path)
