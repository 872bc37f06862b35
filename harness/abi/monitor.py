"""Cilium's monitor aggregation levels, as bpf_src/lib/events.h defines them
(``CB_MONITOR_NONE`` ... ``CB_MONITOR_MAXIMUM``, and ``CB_MONITOR_OFF``: no events):
the names the CLI takes and the values the programs' ``monitor_aggregation`` gets."""
from __future__ import annotations

from harness.abi.cheaders import defines

#: name -> value, in the header's order: none, lowest, low, medium, maximum, off.
LEVELS = {name.removeprefix("CB_MONITOR_").lower(): value
          for name, value in defines("lib/events.h", "CB_MONITOR_").items()
          if name != "CB_MONITOR_INTERVAL"}
#: Cilium's default.
DEFAULT = "medium"
