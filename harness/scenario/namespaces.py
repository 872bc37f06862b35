"""Namespace validation: cluster-scoped, and its labels (what namespaceSelectors
match) may only set kubernetes.io/metadata.name to its own name.
"""
from __future__ import annotations

import dataclasses

from harness.scenario.errors import FieldError
from harness.scenario.fields import check_keys, mapping
from harness.scenario.model import NAMESPACE_NAME_LABEL, Namespace, ObjectMeta


_NS_SPEC_KEYS = frozenset({"finalizers"})
_NS_STATUS_KEYS = frozenset({"phase", "conditions"})


def parse_namespace(obj: dict, meta: ObjectMeta, cache: dict) -> Namespace:
    """A Namespace: cluster-scoped, its labels are what namespaceSelectors match."""
    raw = obj.get("metadata") or {}
    if raw.get("namespace") is not None:
        raise FieldError("metadata.namespace", "a Namespace is cluster-scoped: remove metadata.namespace")
    given = meta.labels.get(NAMESPACE_NAME_LABEL)
    if given is not None and given != meta.name:
        raise FieldError(f"metadata.labels[{NAMESPACE_NAME_LABEL}]",
                         f"must be the namespace's name {meta.name!r} (the API server sets it), got {given!r}")
    for key, allowed in (("spec", _NS_SPEC_KEYS), ("status", _NS_STATUS_KEYS)):
        if obj.get(key) is not None:
            check_keys(mapping(obj[key], key), key, allowed)
    return Namespace(dataclasses.replace(meta, namespace=""))
