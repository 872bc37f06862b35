"""Scenario loader: multi-document Kubernetes YAML → typed, validated model (re-exports only)."""
from harness.scenario.errors import FieldError, ScenarioError
from harness.scenario.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    SERVICE_NAME_LABEL,
    CiliumNetworkPolicy,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    Namespace,
    NetworkPolicy,
    ObjectMeta,
    Pod,
    Scenario,
    Service,
    ServicePort,
    split_ref,
)
from harness.scenario.build import scenario_from_documents
from harness.scenario.load import load_scenario, load_scenario_text
from harness.scenario.services import NODE_PORT_RANGE
from harness.scenario.templates import SCENARIO_DIR, load_template_scenario, render_template

__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "NODE_PORT_RANGE",
    "SCENARIO_DIR",
    "SERVICE_NAME_LABEL",
    "CiliumNetworkPolicy",
    "ContainerPort",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "FieldError",
    "IPAddress",
    "Namespace",
    "NetworkPolicy",
    "ObjectMeta",
    "Pod",
    "Scenario",
    "ScenarioError",
    "Service",
    "ServicePort",
    "load_scenario",
    "load_scenario_text",
    "load_template_scenario",
    "render_template",
    "scenario_from_documents",
    "split_ref",
]
