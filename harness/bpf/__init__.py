"""Our object model over libbpf (via ctypes), shaped like cilium/ebpf.

Collection.load(path) -> .programs[name] (Program), .maps[name] (Map);
Program.test_run(); attach_tc / attach_xdp / attach_cgroup; RingBuffer.
"""
from .attach import (Link, TcAttachment, XdpAttachment, attach_cgroup, attach_tc, attach_xdp,
                     tc_program_id)
from .collection import Collection
from .errors import (BpfError, KeyNotFoundError, NotSupportedError, StructMismatchError,
                     VerifierError)
from .layout import CStruct, check_layout
from .maps import ANY, EXIST, NOEXIST, Map, Packed
from .programs import (Program, ProgramStats, RunResult, SkBuffCtx, loaded_program_stats,
                       verdict_name)
from .ringbuf import RingBuffer

__all__ = [
    "ANY", "EXIST", "NOEXIST", "BpfError", "CStruct", "Collection", "KeyNotFoundError", "Link",
    "Map", "NotSupportedError", "Packed", "Program", "ProgramStats", "RingBuffer", "RunResult", "StructMismatchError",
    "TcAttachment", "VerifierError", "XdpAttachment", "attach_cgroup", "attach_tc", "attach_xdp",
    "check_layout", "loaded_program_stats", "tc_program_id", "verdict_name",
]
