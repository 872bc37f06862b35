"""Attaching programs: tc (clsact, direct-action), XDP and cgroup.

Each attach call returns an attachment object that detaches on ``detach()``
or when used as a context manager.  Interfaces may live in a project network
namespace: the netlink calls are made from inside it.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os

from harness.host import cgroups, netns

from . import _libbpf as L
from .errors import BpfError, check
from .programs import Program

TC_INGRESS, TC_EGRESS = 1, 2
XDP_FLAGS = {"skb": 1 << 1, "native": 1 << 2, "offload": 1 << 3, "auto": 0}
_DIRECTIONS = {"ingress": TC_INGRESS, "egress": TC_EGRESS}


class TcAttachment:
    """A program attached as a direct-action filter on a clsact hook."""

    def __init__(self, program: Program, ifname: str, direction: str, netns_name: str | None,
                 ifindex: int, handle: int, priority: int):
        self.program, self.ifname, self.direction = program, ifname, direction
        self.netns, self.ifindex, self.handle, self.priority = netns_name, ifindex, handle, priority
        self.attached = True

    def detach(self) -> None:
        if not self.attached:
            return
        hook = L.opts(L.TcHook, ifindex=self.ifindex, attach_point=_DIRECTIONS[self.direction])
        opt = L.opts(L.TcOpts, handle=self.handle, priority=self.priority)
        with netns.entered(self.netns):
            rc = L.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opt))
        self.attached = False
        # The interface (or its namespace) may already be gone, taking the filter with it.
        if rc < 0 and -rc not in (_errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
            check(rc, f"detach tc {self.direction} from {self.ifname}")

    def __enter__(self) -> "TcAttachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_tc(program: Program, ifname: str, direction: str = "ingress",
              netns_name: str | None = None, priority: int = 1, handle: int = 1) -> TcAttachment:
    """Attach *program* to *ifname*'s clsact *direction* (creating clsact if needed)."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"tc direction must be ingress or egress, not {direction!r}")
    ifindex = netns.ifindex(ifname, netns_name)
    hook = L.opts(L.TcHook, ifindex=ifindex, attach_point=_DIRECTIONS[direction])
    opt = L.opts(L.TcOpts, prog_fd=program.fd, handle=handle, priority=priority)
    step = f"attach {program.name} to tc {direction} of {ifname}"
    with netns.entered(netns_name):
        rc = L.bpf_tc_hook_create(ctypes.byref(hook))
        if rc < 0 and -rc != _errno.EEXIST:
            check(rc, f"create clsact on {ifname}")
        # BPF_TC_F_REPLACE (1): re-attaching replaces our own filter in place.
        opt.flags = 1
        check(L.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opt)), step)
    return TcAttachment(program, ifname, direction, netns_name, ifindex, opt.handle, opt.priority)


def tc_program_id(ifname: str, direction: str = "ingress", netns_name: str | None = None,
                  priority: int = 1, handle: int = 1) -> int | None:
    """The id of the program attached at (*handle*, *priority*) on *ifname*'s clsact
    *direction* (attach_tc's defaults), None when there is none."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"tc direction must be ingress or egress, not {direction!r}")
    ifindex = netns.ifindex(ifname, netns_name)
    hook = L.opts(L.TcHook, ifindex=ifindex, attach_point=_DIRECTIONS[direction])
    opt = L.opts(L.TcOpts, handle=handle, priority=priority)
    with netns.entered(netns_name):
        rc = L.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opt))
    if rc < 0:
        if -rc in (_errno.ENOENT, _errno.EINVAL, _errno.ENODEV):
            return None
        check(rc, f"query tc {direction} of {ifname}")
    return opt.prog_id


class XdpAttachment:
    def __init__(self, program: Program, ifname: str, netns_name: str | None, ifindex: int,
                 flags: int):
        self.program, self.ifname, self.netns = program, ifname, netns_name
        self.ifindex, self.flags, self.attached = ifindex, flags, True

    def detach(self) -> None:
        if not self.attached:
            return
        with netns.entered(self.netns):
            rc = L.bpf_xdp_detach(self.ifindex, self.flags, None)
        self.attached = False
        if rc < 0 and -rc not in (_errno.ENODEV, _errno.ENOENT):
            check(rc, f"detach xdp from {self.ifname}")

    def __enter__(self) -> "XdpAttachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_xdp(program: Program, ifname: str, netns_name: str | None = None,
               mode: str = "auto") -> XdpAttachment:
    if mode not in XDP_FLAGS:
        raise ValueError(f"xdp mode must be one of {', '.join(XDP_FLAGS)}")
    ifindex = netns.ifindex(ifname, netns_name)
    with netns.entered(netns_name):
        check(L.bpf_xdp_attach(ifindex, program.fd, XDP_FLAGS[mode], None),
              f"attach {program.name} to xdp of {ifname}")
    return XdpAttachment(program, ifname, netns_name, ifindex, XDP_FLAGS[mode])


class Link:
    """A bpf_link (cgroup attachments); destroying it detaches the program."""

    def __init__(self, handle: int, what: str):
        self._h, self.what = handle, what

    def pin(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        check(L.bpf_link__pin(self._h, path.encode()), f"pin link {self.what} at {path}")

    def detach(self) -> None:
        if self._h:
            L.bpf_link__destroy(self._h)
            self._h = 0

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_cgroup(program: Program, cgroup_path: str) -> Link:
    """Attach *program* to a project cgroup (``cb-*`` under the cgroup2 mount)."""
    cgroups.check_project_cgroup(cgroup_path)
    if program._handle is None:
        raise BpfError(f"attach {program.name}", _errno.EINVAL, "program has no libbpf handle")
    fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        link = L.bpf_program__attach_cgroup(program._handle, fd)
        if not link:
            raise BpfError(f"attach {program.name} to cgroup {cgroup_path}",
                           L.errno_now() or _errno.EINVAL)
    finally:
        os.close(fd)
    return Link(link, f"{program.name}@{cgroup_path}")
