"""Scenario errors: the one-line ``ScenarioError`` every loader failure becomes.

A ``ScenarioError`` renders as a single line::

    FILE: document N (Kind ns/name): FIELD.PATH: message

Parts that are unknown are left out (a YAML syntax error has a line and column
instead of a document; a missing pod has neither).  ``FieldError`` is what the
validators raise internally: a field path and a message, to which the loader
adds the file, document and object.
"""
from __future__ import annotations

from harness.errors import InputError


def one_line(text: str) -> str:
    """Collapse line breaks so a message always fits on one line."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class ScenarioError(InputError):
    """A scenario file (or a lookup in a loaded scenario) is invalid.

    ``str()`` is exactly one line; the parts are also available as attributes.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<string>",
        document: int | None = None,
        kind: str | None = None,
        ref: str | None = None,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
        plan: bool = False,
    ) -> None:
        self.message = one_line(message)
        #: The object is valid but lies outside the project's address plan (a foreign
        #: cluster's addresses or node names): ``up --renumber`` maps it in.
        self.plan = plan
        self.source = one_line(source)
        self.document = document
        self.kind = kind
        self.ref = ref
        self.field = field
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [self.source]
        if self.document is not None:
            where = f"document {self.document}"
            if self.kind and self.ref:
                where += f" ({self.kind} {self.ref})"
            elif self.kind:
                where += f" ({self.kind})"
            parts.append(where)
        if self.line is not None:
            parts.append(f"line {self.line}" + (f", column {self.column}" if self.column is not None else ""))
        if self.field:
            parts.append(one_line(self.field))
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self):  # keep the keyword-only constructor picklable
        return (_rebuild, (self.message, self.__dict__.copy()))


def _rebuild(message: str, state: dict) -> ScenarioError:
    err = ScenarioError.__new__(ScenarioError)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err


class FieldError(ValueError):
    """A validation failure at *field* (a path like ``spec.ports[0].port``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PlanFieldError(FieldError):
    """A valid value outside the project's address plan (an address, a ClusterIP outside
    the service CIDR, a node name not ``cb-node<i>``): refused only by plan-checked loads."""
