"""Python mirrors of tests/bpf/fixture.h (the loader fixture's structs)."""
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

from harness.bpf import CStruct


class FixtureKey(CStruct):
    _c_name_ = "fixture_key"
    _fields_ = [("addr", c_uint32), ("port", c_uint16), ("proto", c_uint8), ("pad", c_uint8)]


class FixtureValue(CStruct):
    _c_name_ = "fixture_value"
    _fields_ = [("hits", c_uint64), ("backend", c_uint32), ("flags", c_uint16), ("pad", c_uint16)]


class FixtureEvent(CStruct):
    _c_name_ = "fixture_event"
    _fields_ = [("seq", c_uint64), ("len", c_uint32), ("tag", c_uint32), ("mark", c_uint32),
                ("pad", c_uint32)]
