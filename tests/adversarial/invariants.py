"""The checks every packet's outcome must meet, from SPEC.md "Invariants":

- the verdict is OK, SHOT or REDIRECT (REFUSED only for frames the kernel will not run:
  shorter than an Ethernet header);
- a drop has exactly one reason counted in cb_metrics, a known one;
- a passed frame has the input's length, its bytes after the IP packet (trailer) are
  unchanged, and it differs from the input only in fields a NAT may rewrite
  (`rewritable`): IP addresses, the IPv4 header checksum, L4 ports and checksums, the
  quoted packet's addresses/ports/checksums in an ICMP error; and for a REDIRECT (the
  VIP's echo reply) also the MACs, TTL / hop limit and ICMP type/code;
- every checksum valid in the input is valid in the output (own code: wire.checksums);
  a UDP checksum 0 stays 0; SCTP's CRC32c is not touched;
- a rewritten address is one a NAT of this node can produce (a VIP, node, backend, or
  one of the input's own addresses);
- a drop creates no conntrack or NAT entry;
- from_container never passes an IP packet whose source is not the pod's (link-scoped NDP at hop
  limit 255 excepted; non-IP frames are not IP packets).

`check(node, inp, out, created)` returns a list of violations (strings), empty if none.
"""
from __future__ import annotations

import ipaddress

from . import node as N
from . import wire as W

#: drop reasons of bpf_src/lib/drop.h a program may count
KNOWN_REASONS = {132, 133, 134, 157, 158, 167, 174, 181}

_NAT_ADDRS = {ipaddress.ip_address(a).packed for a in (
    N.VIP4, N.VIP6, N.NP_LOCAL_VIP, N.NP_REMOTE_VIP, N.NODE4, N.NODE6, N.WEB, N.WEB6,
    N.REMOTE, N.REMOTE6, N.REMOTE_NP)}


def rewritable(f: bytes, lay: W.Layout, redirect: bool) -> set[int]:
    """Byte offsets of *f* a NAT (or, with *redirect*, the VIP echo reply) may change."""
    ok: set[int] = set()
    if lay.l3 is None or lay.version is None or lay.ip_end is None:
        return ok
    a = lay.l3
    for off, size in (lay.src, lay.dst):
        ok.update(range(off, off + size))
    if lay.version == 4:
        ok.update((a + 10, a + 11))
    if redirect:
        ok.update(range(0, 12))
        ok.add(a + 8 if lay.version == 4 else a + 7)
    p = lay.l4
    if p is None:      # later fragments and other protocols: no ports to NAT
        return ok
    proto = lay.proto
    if proto in (W.TCP, W.UDP, W.SCTP):
        ok.update(range(p, p + 4))
    if proto == W.TCP:
        ok.update((p + 16, p + 17))
    elif proto == W.UDP:
        ok.update((p + 6, p + 7))
    elif proto in (W.ICMP, W.ICMP6):
        ok.update((p + 2, p + 3))
        if redirect:
            ok.update((p, p + 1))
        q = W.quote(f, lay)
        if q:
            ok.update(_quoted(f, q[0], q[1], lay.ip_end))
    return {i for i in ok if i < lay.ip_end or i < 14}


def _quoted(f: bytes, q: int, version: int, end: int) -> set[int]:
    """The quoted packet's addresses, IPv4 checksum, and its L4 ports and checksum."""
    ok: set[int] = set()
    if version == 4:
        ok.update(range(q + 10, q + 12))
        ok.update(range(q + 12, q + 20))
        ihl = (f[q] & 0xF) * 4 if q < len(f) else 20
        proto, l4 = (f[q + 9] if q + 9 < len(f) else 0), q + max(ihl, 20)
    else:
        ok.update(range(q + 8, q + 40))
        proto, l4 = (f[q + 6] if q + 6 < len(f) else 0), q + 40
        # a quote's extension headers: walk them to find its ports
        hops = 0
        while proto in W.EXT_HEADERS and l4 + 8 <= end and hops < W.MAX_EXT:
            size = 8 if proto == 44 else ((f[l4 + 1] + 2) * 4 if proto == 51 else (f[l4 + 1] + 1) * 8)
            proto, l4, hops = f[l4], l4 + size, hops + 1
    if proto in (W.TCP, W.UDP, W.SCTP):
        ok.update(range(l4, l4 + 4))
    if proto == W.TCP:
        ok.update((l4 + 16, l4 + 17))
    elif proto == W.UDP:
        ok.update((l4 + 6, l4 + 7))
    elif proto in (W.ICMP, W.ICMP6):
        ok.update((l4 + 2, l4 + 3))
    return ok


def _is_ndp(f: bytes, lay: W.Layout) -> bool:
    """NDP a pod may send from any source: hop limit 255, to a link-scoped address."""
    if not (lay.version == 6 and lay.proto == W.ICMP6 and lay.l4 is not None
            and 133 <= f[lay.l4] <= 137 and f[lay.l3 + 7] == 255):
        return False
    d, n = lay.dst
    return W.link_scoped6(f[d:d + n])


def check(inp: bytes, out: N.Outcome, created: frozenset = frozenset(),
          lay: W.Layout | None = None) -> list[str]:
    """Violations of the invariants by *out*, the outcome of running *inp*; *created*
    is the set of (map, key) entries that appeared during the run."""
    errs: list[str] = []
    lay = lay or W.layout(inp)
    v = out.verdict
    if v == "REFUSED":
        if not N.kernel_refuses(inp):
            errs.append(f"kernel refused a {len(inp)}-byte frame")
        return errs
    if v not in ("TC_ACT_OK", "TC_ACT_SHOT", "TC_ACT_REDIRECT"):
        return [f"verdict {v} (retval {out.retval})"]
    if v == "TC_ACT_SHOT":
        if not out.grown:
            errs.append("drop without a counted reason")
        elif len(out.grown) > 1 or sum(out.grown.values()) != 1:
            errs.append(f"several drop counts grew: {out.grown}")
        if out.reason is not None and out.reason not in KNOWN_REASONS:
            errs.append(f"unknown drop reason {out.reason}")
        if created:
            errs.append("a drop created state: " + ", ".join(
                f"{m} {N.describe_ct_key(k) if m.startswith('cb_ct') else k.hex()}"
                for m, k in sorted(created)))
        return errs
    # -- passed --------------------------------------------------------------------------------
    o = out.data
    if len(o) != len(inp):
        return [f"length changed {len(inp)} -> {len(o)}"]
    if out.program == "from_container" and lay.ethertype in (W.ETH_P_IP, W.ETH_P_IPV6):
        errs += _source_check(inp, lay, out.pod)
    if lay.ethertype not in (W.ETH_P_IP, W.ETH_P_IPV6) or lay.invalid or lay.ip_end is None:
        if o != inp:
            errs.append(f"non-IP/unparsed frame modified at {_diff(inp, o)[:8]}")
        if lay.invalid and not lay.ambiguous and lay.ethertype in (W.ETH_P_IP, W.ETH_P_IPV6):
            errs.append(f"passed an invalid packet ({lay.invalid})")
        return errs
    redirect = v == "TC_ACT_REDIRECT"
    allowed = rewritable(inp, lay, redirect)
    diff = _diff(inp, o)
    bad = [i for i in diff if i not in allowed]
    if bad:
        trailer = [i for i in bad if i >= lay.ip_end]
        if trailer:
            errs.append(f"trailer modified at {trailer[:8]} (ip_end {lay.ip_end})")
        inner = [i for i in bad if i < lay.ip_end]
        if inner:
            errs.append(f"bytes no NAT may rewrite changed at {inner[:8]} "
                        f"(l3 {lay.l3}, l4 {lay.l4})")
    if diff:
        for off, size in (lay.src, lay.dst):
            new = o[off:off + size]
            if new != inp[off:off + size] and new not in _NAT_ADDRS and new not in (
                    inp[lay.src[0]:lay.src[0] + lay.src[1]], inp[lay.dst[0]:lay.dst[0] + lay.dst[1]]) \
                    and out.program != "from_netdev":
                errs.append(f"address rewritten to {ipaddress.ip_address(new)}, not a NAT address")
    if redirect:
        errs += _echo_reply(inp, o, lay)
    # checksums
    before, after = W.checksums(inp, lay), W.checksums(o, W.layout(o))
    for name, ok in before.items():
        if name == "udp0":
            if name not in after:
                errs.append("UDP checksum 0 became non-zero")
            continue
        if ok and not after.get(name, False):
            if name == "udp" and "udp0" in after:
                errs.append("UDP checksum rewritten to 0 (RFC 768: must be 0xffff)")
            else:
                errs.append(f"{name} checksum valid in the input, invalid in the output")
    if lay.proto == W.SCTP and lay.l4 is not None and not lay.fragment:
        p = lay.l4
        if inp[p + 8:p + 12] != o[p + 8:p + 12]:
            errs.append("SCTP CRC32c touched")
    return errs


def _echo_reply(i: bytes, o: bytes, lay: W.Layout) -> list[str]:
    p = lay.l4
    req, rep = (8, 0) if lay.version == 4 else (128, 129)
    if p is None or lay.proto not in (W.ICMP, W.ICMP6) or i[p] != req:
        return ["REDIRECT of a packet that is not an ICMP echo request"]
    errs = []
    if o[p] != rep or o[p + 1] != 0:
        errs.append(f"REDIRECT: type/code {o[p]}/{o[p + 1]}, want {rep}/0")
    (s, n), (d, _) = lay.src, lay.dst
    if o[s:s + n] != i[d:d + n] or o[d:d + n] != i[s:s + n]:
        errs.append("REDIRECT: addresses not swapped")
    if o[0:6] != i[6:12] or o[6:12] != i[0:6]:
        errs.append("REDIRECT: MACs not swapped")
    ttl = o[lay.l3 + 8] if lay.version == 4 else o[lay.l3 + 7]
    if ttl != 64:
        errs.append(f"REDIRECT: TTL {ttl}, want 64")
    return errs


def _source_check(f: bytes, lay: W.Layout, pod: str | None) -> list[str]:
    p = N.PODS[pod]
    if lay.src is None or lay.l3 is None:
        return []
    off, size = lay.src
    if off + size > len(f):
        return ["passed an IP packet too short to have a source"]
    if lay.version not in (4, 6) or (lay.version == 4) != (lay.ethertype == W.ETH_P_IP):
        return []   # version mismatch: reported as invalid elsewhere
    own = ipaddress.ip_address(p.ip4 if lay.version == 4 else p.ip6).packed
    if f[off:off + size] != own and not _is_ndp(f, lay):
        return [f"from_container of {pod} passed source {ipaddress.ip_address(f[off:off + size])}"]
    return []


def _diff(a: bytes, b: bytes) -> list[int]:
    if a == b:
        return []
    return [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
