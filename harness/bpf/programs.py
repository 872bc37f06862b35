"""Loaded BPF programs: BPF_PROG_TEST_RUN, verdict names, pinning.

``Program.test_run`` is the harness's way of running a packet through a
program in the real kernel without any network: data in, data and return
code out, plus the kernel's own per-run duration.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os
from dataclasses import dataclass

from . import _libbpf as L
from .errors import BpfError, NotSupportedError, check

# enum bpf_prog_type (uapi/linux/bpf.h), the ones the project uses or meets
PROG_TYPES = {
    1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint",
    6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in",
    13: "sock_ops", 14: "sk_skb", 15: "cgroup_device", 16: "sk_msg",
    18: "cgroup_sock_addr", 26: "tracing", 30: "syscall",
}

TC_VERDICTS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
               3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
               7: "TC_ACT_REDIRECT"}
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
CGROUP_VERDICTS = {0: "DROP", 1: "ALLOW"}

# The kernel copies back at most data_size_out bytes and fails with ENOSPC if
# the packet grew past it; leave room for encapsulation headers.
_OUT_HEADROOM = 512
_ENOTSUPP = 524   # kernel-internal "not supported for this program type"


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info prefix (uapi/linux/bpf.h), up to run_cnt (Linux >= 5.1; an
    # older kernel fills less and the rest reads as zero)
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_ubyte * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32),
                ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64),
                ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64)]


assert _ProgInfo.run_time_ns.offset == 192, "struct bpf_prog_info layout"


@dataclass(frozen=True)
class ProgramStats:
    """A loaded program's run statistics (``struct bpf_prog_info``): the kernel counts
    them only while ``kernel.bpf_stats_enabled`` is 1 (or a BPF_ENABLE_STATS fd is open);
    the counters only grow."""
    id: int
    name: str               # as the kernel holds it: at most 15 characters
    type: str
    run_time_ns: int
    run_cnt: int


def _stats_of_fd(fd: int, what: str) -> ProgramStats:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
          f"read info of {what}")
    return ProgramStats(info.id, info.name.decode(errors="replace"),
                        PROG_TYPES.get(info.type, str(info.type)), info.run_time_ns, info.run_cnt)


def loaded_program_stats(names: set[str] | None = None) -> list[ProgramStats]:
    """Every program loaded in the kernel (by id, BPF_PROG_GET_NEXT_ID), or those whose
    kernel name is in *names*, with their run statistics.  A program unloaded while the
    walk runs is skipped."""
    found = []
    current = ctypes.c_uint32(0)
    while True:
        rc = L.bpf_prog_get_next_id(current.value, ctypes.byref(current))
        if rc < 0:
            if -rc == _errno.ENOENT:
                return found
            raise BpfError("walk the loaded programs", -rc)
        fd = L.bpf_prog_get_fd_by_id(current.value)
        if fd < 0:
            if -fd == _errno.ENOENT:
                continue
            raise BpfError(f"open program id {current.value}", -fd)
        try:
            stats = _stats_of_fd(fd, f"program id {current.value}")
        finally:
            os.close(fd)
        if names is None or stats.name in names:
            found.append(stats)


@dataclass(frozen=True)
class RunResult:
    """Outcome of one BPF_PROG_TEST_RUN call (``repeat`` runs of the same input)."""
    retval: int
    data_out: bytes
    ctx_out: bytes | None
    duration_ns: int        # the kernel's average per run, truncated to whole ns
    verdict: str


def verdict_name(prog_type: str, retval: int) -> str:
    """Name a program's return code as its hook understands it."""
    if prog_type in ("sched_cls", "sched_act"):
        signed = ctypes.c_int32(retval).value
        return TC_VERDICTS.get(signed, f"TC_ACT_{signed}")
    if prog_type == "xdp":
        return XDP_VERDICTS.get(retval, f"XDP_{retval}")
    if prog_type.startswith("cgroup"):
        return CGROUP_VERDICTS.get(retval, str(retval))
    return str(retval)


#: Room for any context test_run writes back (struct __sk_buff: 192 bytes).
_CTX_OUT_MAX = 1024


class SkBuffCtx(ctypes.Structure):
    """The leading fields of ``struct __sk_buff`` (uapi/linux/bpf.h), as a tc program's
    *ctx* for ``Program.test_run``: the kernel lets a caller set mark, priority,
    ingress_ifindex, ifindex (an interface of the caller's network namespace; 0 or 1:
    loopback) and cb; the others must stay 0."""
    _fields_ = [("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32),
                ("mark", ctypes.c_uint32), ("queue_mapping", ctypes.c_uint32),
                ("protocol", ctypes.c_uint32), ("vlan_present", ctypes.c_uint32),
                ("vlan_tci", ctypes.c_uint32), ("vlan_proto", ctypes.c_uint32),
                ("priority", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("tc_index", ctypes.c_uint32),
                ("cb", ctypes.c_uint32 * 5)]


class Program:
    def __init__(self, name: str, fd: int, prog_type: int, section: str, handle: int | None = None):
        self.name = name
        self.fd = fd
        self.type = PROG_TYPES.get(prog_type, str(prog_type))
        self.section = section
        self._handle = handle          # struct bpf_program *, for libbpf's attach calls
        self._owns_fd = False          # True when opened with from_pin
        self._out = ctypes.create_string_buffer(4096)

    def test_run(self, data: bytes, ctx: bytes | ctypes.Structure | None = None,
                 repeat: int = 1) -> RunResult:
        """Run the program *repeat* times on *data* with BPF_PROG_TEST_RUN.

        For tc programs *ctx* may be a ``struct __sk_buff`` (only the fields the
        kernel lets test_run set: mark, priority, ifindex, cb, tstamp, ...).
        """
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        data = bytes(data)
        need = len(data) + _OUT_HEADROOM
        if len(self._out) < need:
            self._out = ctypes.create_string_buffer(need)
        din = ctypes.create_string_buffer(data, len(data))
        opt = L.opts(L.TestRunOpts, data_in=ctypes.addressof(din), data_size_in=len(data),
                     data_out=ctypes.addressof(self._out), data_size_out=len(self._out),
                     repeat=repeat)
        cin = cout = None
        if ctx is not None:
            raw = bytes(ctx)
            cin = ctypes.create_string_buffer(raw, len(raw))
            # The kernel writes back its whole context (ENOSPC if it does not fit),
            # however little of it was given.
            cout = ctypes.create_string_buffer(max(len(raw), _CTX_OUT_MAX))
            opt.ctx_in, opt.ctx_size_in = ctypes.addressof(cin), len(raw)
            opt.ctx_out, opt.ctx_size_out = ctypes.addressof(cout), len(cout)
        rc = L.bpf_prog_test_run_opts(self.fd, ctypes.byref(opt))
        if rc < 0:
            if -rc in (_ENOTSUPP, _errno.EOPNOTSUPP):
                raise NotSupportedError(f"test_run of {self.type} program {self.name}", -rc)
            detail = ""
            if -rc == _errno.EINVAL and self.type in ("sched_cls", "sched_act"):
                detail = ("the kernel's tc test_run wants at least an Ethernet header and, "
                          "for IPv4/IPv6, the whole IP header")
            raise BpfError(f"test_run of program {self.name}", -rc, detail)
        out = self._out.raw[:opt.data_size_out]
        ctx_out = cout.raw[:opt.ctx_size_out] if cout is not None else None
        return RunResult(opt.retval, out, ctx_out, opt.duration,
                         verdict_name(self.type, opt.retval))

    @property
    def id(self) -> int:
        """The kernel's id of this program (as `bpftool prog` and `tc filter show` print it)."""
        info = (ctypes.c_uint32 * 2)()           # struct bpf_prog_info starts {type, id}
        size = ctypes.c_uint32(ctypes.sizeof(info))
        check(L.bpf_obj_get_info_by_fd(self.fd, info, ctypes.byref(size)),
              f"read info of program {self.name}")
        return info[1]

    def stats(self) -> ProgramStats:
        """This program's run statistics (see ProgramStats)."""
        return _stats_of_fd(self.fd, f"program {self.name}")

    @classmethod
    def from_pin(cls, path: str) -> "Program":
        """Open a pinned program (name and type from the kernel); the Program owns
        its fd: close() it."""
        fd = L.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError(f"open pinned program {path}", -fd)
        info = _ProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        try:
            check(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
                  f"read info of pinned program {path}")
        except BaseException:
            os.close(fd)
            raise
        prog = cls(info.name.decode(), fd, info.type, "")
        prog._owns_fd = True
        return prog

    def close(self) -> None:
        """Close the fd of a Program opened with from_pin (a Collection's are its own)."""
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pin(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        check(L.bpf_obj_pin(self.fd, path.encode()), f"pin program {self.name} at {path}")

    def __repr__(self) -> str:
        return f"Program({self.name!r}, {self.type}, section={self.section!r})"
