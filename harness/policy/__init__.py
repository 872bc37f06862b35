"""Policy resolution: CiliumNetworkPolicy / NetworkPolicy -> identities, ipcache, per-endpoint rules.

The data model is harness.policy.model; the desired state (scenario -> PolicyState) in desired.py, map programming in
control.py (as harness.lb: model.py, desired.py, control.py),
identities in identity.py, label selectors in selectors.py, and an
independent direct evaluator (for differential tests) in reference.py.
"""
from harness.policy.identity import (
    IdentityAllocator,
    allocate_cidr_identities,
    node_addresses,
    node_identities,
    security_labels,
)
from harness.policy.model import (
    ANY_IDENTITY,
    ANY_PORT,
    ANY_PROTO,
    EndpointPolicy,
    Identity,
    IpcacheEntry,
    PolicyState,
    PortRange,
    Rule,
)
from harness.policy.desired import format_identities, policy_state

__all__ = [
    "ANY_IDENTITY",
    "ANY_PORT",
    "ANY_PROTO",
    "EndpointPolicy",
    "Identity",
    "IdentityAllocator",
    "IpcacheEntry",
    "PolicyState",
    "PortRange",
    "Rule",
    "allocate_cidr_identities",
    "format_identities",
    "node_addresses",
    "node_identities",
    "policy_state",
    "security_labels",
]
