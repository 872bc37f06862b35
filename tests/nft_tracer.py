"""A knftables.Fake for our ``nft -f`` transactions, and upstream's packet tracer.

Ports of kube-proxy's test helpers (pkg/proxy/nftables/helpers_test.go and
knftables' fake.go), for comparing our renderer with upstream's expectations:

- :class:`FakeTable` applies transactions line by line as the kernel (and
  knftables.Fake) would: add/flush/delete of tables, chains, sets, maps,
  rules and elements; :meth:`FakeTable.dump` writes the result as
  ``knftables.Fake.Dump`` does (one ``add ...`` line per object, rule and
  element), so a dump compares with upstream's expected text.
- :func:`sort_transaction` is ``sortNFTablesTransaction`` (blank and ``#``
  lines dropped, lines ordered by object type, then name, rules keeping their
  order) and :func:`diff_transaction` is ``diffNFTablesTransaction``.
- :class:`Tracer` / :func:`trace_packet` are ``nftablesTracer`` /
  ``tracePacket``: regexps recognising exactly the rule pieces kube-proxy
  writes, a packet run through filter-prerouting, nat-prerouting (then its
  DNAT applied), filter-forward and filter-input; every endpoint of a numgen
  vmap is followed, ``jump mark-for-masquerade`` sets the masquerade flag.
  Any rule piece it cannot read is an error (never silently skipped).
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field

OBJECT_ORDER = {"table": 10, "chain": 9, "rule": 8, "set": 7, "map": 6, "element": 5}


class TransactionError(ValueError):
    """A line the fake cannot apply (unknown object, missing chain...)."""


@dataclass
class Chain:
    name: str
    spec: str = ""              # "{ type ... ; }" or "{ comment ... ; }", "" for a regular chain
    rules: list[str] = field(default_factory=list)


@dataclass
class Element:
    key: list[str]
    value: list[str]
    comment: str | None = None

    def text(self) -> str:
        out = " . ".join(self.key)
        if self.comment is not None:
            out += f' comment "{self.comment}"'
        if self.value:
            out += " : " + " . ".join(self.value)
        return out


@dataclass
class Container:
    kind: str                   # "set" or "map"
    name: str
    spec: str
    elements: dict[tuple[str, ...], Element] = field(default_factory=dict)


_ELEMENT = re.compile(r'^\{ (?P<key>.*?)(?: comment "(?P<comment>[^"]*)")?(?: : (?P<value>.*))? \}$')


def _split_name(rest: str) -> tuple[str, str]:
    name, _, spec = rest.partition(" ")
    return name, spec.strip()


class FakeTable:
    """One nftables table (family + name), built from transactions."""

    def __init__(self, family: str = "ip", name: str = "kube-proxy"):
        self.family, self.name = family, name
        self.exists = False
        self.comment_spec = ""
        self.chains: dict[str, Chain] = {}
        self.containers: dict[str, Container] = {}

    @property
    def prefix(self) -> str:
        return f"{self.family} {self.name}"

    # -- applying --------------------------------------------------------

    def run(self, text: str) -> int:
        """Apply a transaction; the number of operations (NumOperations)."""
        ops = 0
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            self._apply(line.strip())
            ops += 1
        return ops

    def _apply(self, line: str) -> None:
        verb, kind, rest = (line.split(" ", 2) + ["", ""])[:3]
        if not rest.startswith(self.prefix + " ") and rest != self.prefix \
                and not rest.startswith(self.prefix + " {"):
            raise TransactionError(f"not table {self.prefix}: {line}")
        rest = rest[len(self.prefix):].strip()
        if kind == "table":
            if verb == "add":
                self.exists = True
                self.comment_spec = self.comment_spec or rest
            elif verb == "delete":
                self.__init__(self.family, self.name)
            elif verb == "flush":
                for c in self.chains.values():
                    c.rules.clear()
                for s in self.containers.values():
                    s.elements.clear()
            return
        if not self.exists:
            raise TransactionError(f"no table {self.prefix}: {line}")
        if kind == "chain":
            name, spec = _split_name(rest)
            if verb == "add":
                if name not in self.chains:
                    self.chains[name] = Chain(name, spec)
                elif spec and self.chains[name].spec != spec:
                    raise TransactionError(f"chain {name} exists with other properties: {line}")
            elif verb == "flush":
                self._chain(name, line).rules.clear()
            elif verb == "delete":
                self._chain(name, line)
                del self.chains[name]
            else:
                raise TransactionError(line)
        elif kind == "rule":
            name, rule = _split_name(rest)
            if verb != "add":
                raise TransactionError(line)
            self._chain(name, line).rules.append(rule)
        elif kind in ("set", "map"):
            name, spec = _split_name(rest)
            if verb == "add":
                self.containers.setdefault(name, Container(kind, name, spec))
            elif verb == "flush":
                self._container(name, line).elements.clear()
            elif verb == "delete":
                self._container(name, line)
                del self.containers[name]
            else:
                raise TransactionError(line)
        elif kind == "element":
            name, body = _split_name(rest)
            c = self._container(name, line)
            m = _ELEMENT.match(body)
            if not m:
                raise TransactionError(f"bad element: {line}")
            key = [k.strip() for k in m["key"].split(" . ")]
            if verb == "add":
                value = [v.strip() for v in m["value"].split(" . ")] if m["value"] else []
                if (c.kind == "map") != bool(value):
                    raise TransactionError(f"element value does not fit {c.kind} {name}: {line}")
                c.elements.setdefault(tuple(key), Element(key, value, m["comment"]))
            elif verb == "delete":
                if tuple(key) not in c.elements:
                    raise TransactionError(f"no such element: {line}")
                del c.elements[tuple(key)]
            else:
                raise TransactionError(line)
        else:
            raise TransactionError(f"unknown object: {line}")

    def _chain(self, name: str, line: str) -> Chain:
        if name not in self.chains:
            raise TransactionError(f"no chain {name}: {line}")
        return self.chains[name]

    def _container(self, name: str, line: str) -> Container:
        if name not in self.containers:
            raise TransactionError(f"no set/map {name}: {line}")
        return self.containers[name]

    # -- dumping ---------------------------------------------------------

    def dump(self) -> str:
        """knftables.Fake.Dump: table, chains, sets, maps, rules, elements."""
        if not self.exists:
            return ""
        p = self.prefix
        out = [f"add table {p}" + (f" {self.comment_spec}" if self.comment_spec else "")]
        for name in sorted(self.chains):
            spec = self.chains[name].spec
            out.append(f"add chain {p} {name}" + (f" {spec}" if spec else ""))
        for kind in ("set", "map"):
            for name in sorted(n for n, c in self.containers.items() if c.kind == kind):
                out.append(f"add {kind} {p} {name} {self.containers[name].spec}")
        for name in sorted(self.chains):
            out += [f"add rule {p} {name} {r}" for r in self.chains[name].rules]
        for name in sorted(self.containers):
            for el in self.containers[name].elements.values():
                out.append(f"add element {p} {name} {{ {el.text()} }}")
        return "\n".join(out) + "\n"

    def elements(self, name: str) -> list[Element]:
        c = self.containers.get(name)
        return list(c.elements.values()) if c else []


def sort_transaction(tx: str) -> str:
    """sortNFTablesTransaction."""
    lines = [ln for ln in tx.split("\n") if ln != "" and not ln.startswith("#")]

    def key(item: tuple[int, str]):
        i, line = item
        w = line.split(" ")
        if len(w) < 5:
            return (0, "", 0, "")
        kind, name = w[1], w[4]
        return (-OBJECT_ORDER.get(kind, 0), name, i if kind == "rule" else 0,
                "" if kind == "rule" else line)
    return "\n".join(line for _, line in sorted(enumerate(lines), key=key))


def diff_transaction(expected: str, result: str) -> str:
    """diffNFTablesTransaction: "" when equal after sorting, else a unified diff."""
    a, b = sort_transaction(expected), sort_transaction(result)
    if a == b:
        return ""
    return "\n".join(difflib.unified_diff(a.split("\n"), b.split("\n"), "expected", "result",
                                          lineterm=""))


# -- the tracer --------------------------------------------------------------

_destAddr = re.compile(r"^ip6* daddr (!= )?(\S+)")
_destAddrLookup = re.compile(r"^ip6* daddr (!= )?\{([^}]*)\}")
_destAddrLocal = re.compile(r"^fib daddr type local")
_destPort = re.compile(r"^(tcp|udp|sctp) dport (\d+)")
_destIPOnlyLookup = re.compile(r"^ip6* daddr @(\S+)")
_destLookup = re.compile(r"^ip6* daddr \. meta l4proto \. th dport @(\S+)")
_destSourceLookup = re.compile(r"^ip6* daddr \. meta l4proto \. th dport \. ip6* saddr @(\S+)")
_destPortLookup = re.compile(r"^meta l4proto \. th dport @(\S+)")
_destDispatch = re.compile(r"^ip6* daddr \. meta l4proto \. th dport vmap @(\S+)$")
_destPortDispatch = re.compile(r"^meta l4proto \. th dport vmap @(\S+)$")
_sourceAddr = re.compile(r"^ip6* saddr (!= )?(\S+)")
_sourceAddrLookup = re.compile(r"^ip6* saddr (!= )?\{([^}]*)\}")
_sourceIPOnlyLookup = re.compile(r"^ip6* saddr @(\S+)")
_sourceAddrLocal = re.compile(r"^fib saddr type local")
_endpointVMap = re.compile(r"^numgen random mod \d+ vmap \{(.*)\}$")
_endpointVMapEntry = re.compile(r"\d+ : goto (\S+)")
_masquerade = re.compile(r"^jump mark-for-masquerade$")
_jump = re.compile(r"^(jump|goto) (\S+)$")
_return = re.compile(r"^return$")
_verdict = re.compile(r"^(drop|reject)$")
_dnat = re.compile(r"^meta l4proto (tcp|udp|sctp) dnat to (\S+)$")
_affinityUpdate = re.compile(r"^update @(\S+) \{ ip6* saddr \}")
_ignored = re.compile(r' *comment "[^"]*"$|^ct state new')


class TraceError(AssertionError):
    """A rule piece the tracer does not recognise."""


def _addr_matches(ip: str, negated: bool, rule_addr: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if "/" in rule_addr:
        net = ipaddress.ip_network(rule_addr, strict=False)
        match = addr.version == net.version and addr in net
    else:
        match = addr == ipaddress.ip_address(rule_addr)
    return not match if negated else match


def _any_matches(ip: str, rule_addrs: str) -> bool:
    return any(_addr_matches(ip, False, a) for a in rule_addrs.replace(" ", "").split(",") if a)


class Tracer:
    """nftablesTracer: one packet through one FakeTable."""

    def __init__(self, nft: FakeTable, node_ips):
        self.nft = nft
        self.node_ips = set(node_ips)
        self.matches: list[str] = []
        self.outputs: list[str] = []
        self.mark_masq = False

    def _match_dest(self, elements, dest_ip, proto, dest_port):
        return next((e for e in elements if e.key[:3] == [dest_ip, proto, dest_port]), None)

    def _match_dest_port(self, elements, proto, dest_port):
        return next((e for e in elements if e.key[:2] == [proto, dest_port]), None)

    def run_chain(self, chname: str, src: str, proto: str, dst: str, dport: str) -> bool:
        """runChain: True when the packet hit a terminal action."""
        ch = self.nft.chains.get(chname)
        if ch is None:
            raise TraceError(f"unknown chain {chname!r}")
        for rule_obj in ch.rules:
            rule = _ignored.sub("", rule_obj)
            while rule:
                rule = rule.lstrip(" ")
                if m := _destIPOnlyLookup.match(rule):
                    rule = rule[m.end():]
                    if not any(e.key[0] == dst for e in self.nft.elements(m[1])):
                        break
                elif m := _destSourceLookup.match(rule):
                    rule = rule[m.end():]
                    if not any(e.key[:3] == [dst, proto, dport] and _addr_matches(src, False, e.key[3])
                               for e in self.nft.elements(m[1])):
                        break
                elif m := _destLookup.match(rule):
                    rule = rule[m.end():]
                    if self._match_dest(self.nft.elements(m[1]), dst, proto, dport) is None:
                        break
                elif m := _destPortLookup.match(rule):
                    rule = rule[m.end():]
                    if self._match_dest_port(self.nft.elements(m[1]), proto, dport) is None:
                        break
                elif m := _destDispatch.match(rule):
                    el = self._match_dest(self.nft.elements(m[1]), dst, proto, dport)
                    if el is None:
                        break
                    rule = el.value[0]
                elif m := _destPortDispatch.match(rule):
                    el = self._match_dest_port(self.nft.elements(m[1]), proto, dport)
                    if el is None:
                        break
                    rule = el.value[0]
                elif m := _destAddrLookup.match(rule):
                    rule = rule[m.end():]
                    if _any_matches(dst, m[2]) == bool(m[1]):
                        break
                elif m := _destAddr.match(rule):
                    rule = rule[m.end():]
                    if not _addr_matches(dst, bool(m[1]), m[2]):
                        break
                elif m := _destAddrLocal.match(rule):
                    rule = rule[m.end():]
                    if dst not in self.node_ips:
                        break
                elif m := _destPort.match(rule):
                    rule = rule[m.end():]
                    if (proto, dport) != (m[1], m[2]):
                        break
                elif m := _sourceAddrLookup.match(rule):
                    rule = rule[m.end():]
                    if _any_matches(src, m[2]) == bool(m[1]):
                        break
                elif m := _sourceIPOnlyLookup.match(rule):
                    rule = rule[m.end():]
                    if not any(e.key[0] == src for e in self.nft.elements(m[1])):
                        break
                elif m := _sourceAddr.match(rule):
                    rule = rule[m.end():]
                    if not _addr_matches(src, bool(m[1]), m[2]):
                        break
                elif m := _sourceAddrLocal.match(rule):
                    rule = rule[m.end():]
                    if src not in self.node_ips:
                        break
                elif m := _affinityUpdate.match(rule):
                    # Recording the client in the affinity set: no effect on this trace.
                    rule = rule[m.end():]
                elif _masquerade.match(rule):
                    rule = ""
                    self.matches.append(rule_obj)
                    self.mark_masq = True
                elif m := _jump.match(rule):
                    rule = ""
                    self.matches.append(rule_obj)
                    if self.run_chain(m[2], src, proto, dst, dport):
                        return True
                    if m[1] == "goto":
                        return False
                elif m := _verdict.match(rule):
                    self.matches.append(rule_obj)
                    self.outputs.append(m[1].upper())
                    return True
                elif _return.match(rule):
                    self.matches.append(rule_obj)
                    return False
                elif m := _dnat.match(rule):
                    self.matches.append(rule_obj)
                    self.outputs.append(m[2])
                    return True
                elif m := _endpointVMap.match(rule):
                    for chain in _endpointVMapEntry.findall(m[1]):
                        self.matches.append(rule_obj)
                        self.run_chain(chain, src, proto, dst, dport)
                    return True
                else:
                    raise TraceError(f"unmatched rule: {rule_obj!r} (at {rule!r})")
        return False


def _host(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[1:hostport.index("]")]
    return hostport.rsplit(":", 1)[0]


def trace_packet(nft: FakeTable, src: str, proto: str, dst: str, dport: str,
                 node_ips) -> tuple[list[str], str, bool]:
    """tracePacket: (matched rules, ", "-joined outputs, masqueraded)."""
    t = Tracer(nft, node_ips)
    if t.run_chain("filter-prerouting", src, proto, dst, dport):
        return t.matches, ", ".join(t.outputs), t.mark_masq
    t.run_chain("nat-prerouting", src, proto, dst, dport)
    if t.outputs:
        dst = _host(t.outputs[0])
    if t.run_chain("filter-forward", src, proto, dst, dport):
        return t.matches, ", ".join(t.outputs), t.mark_masq
    t.run_chain("filter-input", src, proto, dst, dport)
    return t.matches, ", ".join(t.outputs), t.mark_masq
