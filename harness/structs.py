"""Python mirrors of the C structs that BPF maps share with the harness.

Each struct is defined once in ``bpf_src/lib/*.h`` and mirrored once here;
``Collection.load`` compares every mirror with the object's BTF (names,
offsets, sizes) and refuses to load on a difference.  Field names match the
C names exactly; explicit padding fields are named ``pad``.
"""
from __future__ import annotations

from ctypes import c_uint8, c_uint16, c_uint64

from harness.bpf.layout import CStruct


class TrafficCounter(CStruct):
    """lib/common.h: packets and bytes, the value of every counter map."""
    _c_name_ = "traffic_counter"
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class MetricsKey(CStruct):
    """lib/metrics.h: (reason, direction) key of cb_metrics."""
    _c_name_ = "metrics_key"
    _fields_ = [("reason", c_uint8), ("dir", c_uint8), ("pad", c_uint16)]
