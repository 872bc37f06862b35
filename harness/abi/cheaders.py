"""Reading constants out of bpf_src/lib headers, so each is defined only once.

Enums whose names the harness prints (drop reasons, counter classes) are
written in C and read here, instead of being copied into Python.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from harness.paths import BPF_SRC

_ENUM = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_MEMBER = re.compile(r"^\s*(\w+)\s*(?:=\s*(0x[0-9a-fA-F]+|\d+))?\s*,?\s*(?:/\*\s*(.*?)\s*\*/)?\s*$")


@dataclass(frozen=True)
class EnumMember:
    name: str
    value: int
    comment: str


@functools.cache
def enum_members(header: str, enum: str) -> tuple[EnumMember, ...]:
    """Members of ``enum <enum>`` in ``bpf_src/<header>``, values as C assigns them."""
    text = (BPF_SRC / header).read_text()
    for match in _ENUM.finditer(text):
        if match.group(1) != enum:
            continue
        members, value = [], -1
        for line in match.group(2).splitlines():
            line = line.strip()
            if not line or line.startswith(("/*", "*", "//")):
                continue
            m = _MEMBER.match(line)
            if not m:
                raise ValueError(f"{header}: enum {enum}: cannot read line {line!r}")
            value = int(m.group(2), 0) if m.group(2) else value + 1
            members.append(EnumMember(m.group(1), value, m.group(3) or ""))
        return tuple(members)
    raise KeyError(f"{header}: no enum {enum}")


_DEFINE = re.compile(r"^#define\s+(\w+)\s+\(?\s*(?:(0x[0-9a-fA-F]+|\d+)|1\s*<<\s*(\d+))\s*\)?\s*(?:/\*.*)?$",
                     re.M)


@functools.cache
def defines(header: str, prefix: str) -> dict[str, int]:
    """``#define PREFIX... value`` constants of ``bpf_src/<header>`` whose value is
    a number or ``(1 << n)``, by name."""
    text = (BPF_SRC / header).read_text()
    out = {}
    for m in _DEFINE.finditer(text):
        if m.group(1).startswith(prefix):
            out[m.group(1)] = int(m.group(2), 0) if m.group(2) else 1 << int(m.group(3))
    return out
