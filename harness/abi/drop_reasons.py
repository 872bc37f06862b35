"""Drop reasons by code, as bpf_src/lib/drop.h defines them (Cilium's numbering)."""
from __future__ import annotations

from harness.abi.cheaders import enum_members

_MEMBERS = {m.value: m for m in enum_members("lib/drop.h", "drop_reason")}

#: code -> C name, e.g. 133 -> "DROP_POLICY"
NAMES = {code: m.name for code, m in _MEMBERS.items()}
#: code -> description, e.g. 133 -> "Policy denied"
DESCRIPTIONS = {code: m.comment for code, m in _MEMBERS.items()}
#: C name -> code
CODES = {m.name: code for code, m in _MEMBERS.items()}


def describe(code: int) -> str:
    """'Policy denied' for 133; 'unknown drop reason 250' for codes drop.h lacks."""
    return DESCRIPTIONS.get(code) or f"unknown drop reason {code}"
