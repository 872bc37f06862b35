"""Policy resolution: CiliumNetworkPolicy / NetworkPolicy -> identities, ipcache, per-endpoint rules.

The data model is harness.policy.model; resolution lives in resolve.py,
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
from harness.policy.resolve import format_identities, resolve

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
    "resolve",
    "security_labels",
]
