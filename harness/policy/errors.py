"""The one error policy compilation raises internally: a field path and a message.

``PolicyFieldError`` is what selector and rule compilation raise when a
policy uses something chainbench cannot (or Cilium would not) enforce.  The
resolver turns it into the scenario's one-line ``ScenarioError`` with
``Scenario.error(policy, field, message)``, so the message names the file,
document, object and field.
"""
from __future__ import annotations


class PolicyFieldError(ValueError):
    """A policy field that cannot be resolved: *field* is a path inside the object (``spec.ingress[0]``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
