"""kube-proxy's iptables test machinery, ported from Kubernetes v1.31
(pkg/util/iptables/testing/parse.go and fake.go, pkg/proxy/iptables/proxier_test.go):

- :func:`parse_rule` / :func:`parse_dump` / :meth:`Dump.text`: ParseRule (non-strict),
  ParseIPTablesDump and IPTablesDump.String();
- :func:`sort_rules`, :func:`rules_diff`, :func:`check_rule_jumps`:
  sortIPTablesRules, assertIPTablesRulesEqual's comparison, checkIPTablesRuleJumps;
- :class:`FakeIptables`: the fake's RestoreAll under --noflush (chain lines flush,
  ``-X`` deletes, untouched chains persist; a restore that would leave a jump to
  a deleted chain fails whole, as iptables-restore does) and EnsureChain/EnsureRule;
- :func:`trace_packet`: iptablesTracer / tracePacket, which follows a packet
  from nat PREROUTING through the rules (probabilistic jumps collect every
  endpoint) and then the filter chains kube-proxy fills.
"""
from __future__ import annotations

import copy
import difflib
import ipaddress
import re
from dataclasses import dataclass, field

from harness.kubeproxy.iptables import JUMPS, KUBE_NODEPORTS, KUBE_SERVICES, jump_rule

_WORD = re.compile(r'(?:^|\s)("[^"]*"|[^"]\S*)')

# param -> (field, takes a value, negatable), as the Rule struct tags.
_PARAMS = {
    "-A": ("chain", True, False), "--comment": ("comment", True, False),
    "-p": ("protocol", True, True),
    "-s": ("source_address", True, True), "--src-type": ("source_type", True, True),
    "--sport": ("source_port", True, True),
    "-d": ("destination_address", True, True), "--dst-type": ("destination_type", True, True),
    "--dport": ("destination_port", True, True),
    "--match-set": ("match_set", True, True),
    "-j": ("jump", True, False), "--random-fully": ("random_fully", False, False),
    "--probability": ("probability", True, False),
    "--to-destination": ("dnat_destination", True, False),
    "--rcheck": ("affinity_check", False, True), "--mark": ("mark_check", True, True),
    "--ctstate": ("ct_state_check", True, True),
    "--name": ("affinity_name", True, False), "--seconds": ("affinity_seconds", True, False),
    "--set": ("affinity_set", False, True), "--reap": ("affinity_reap", False, False),
    "--mode": ("statistic_mode", True, False),
}


@dataclass(frozen=True)
class Value:
    """IPTablesValue: a parameter's value and whether it was negated."""
    value: str
    negated: bool = False

    def matches(self, cmp: str) -> bool:
        return (self.value != cmp) if self.negated else (self.value == cmp)


@dataclass
class Rule:
    raw: str
    fields: dict = field(default_factory=dict)

    def __getattr__(self, name):
        if name in ("raw", "fields"):
            raise AttributeError(name)
        return self.fields.get(name)


class ParseError(ValueError):
    pass


def parse_rule(line: str) -> Rule:
    """ParseRule(rule, strict=false)."""
    words = [m.group(1).strip('"') for m in _WORD.finditer(line)]
    if len(words) < 2 or words[0] != "-A":
        raise ParseError('bad iptables rule (does not start with "-A CHAIN")')
    if len(words) < 3:
        raise ParseError("bad iptables rule (no match rules)")
    rule = Rule(line)
    negated = False
    w = 0
    while w < len(words):
        if words[w] == "-m" and w < len(words) - 1:
            w += 2
            continue
        if words[w] == "!":
            negated = True
            w += 1
            continue
        spec = _PARAMS.get(words[w])
        if spec is not None:
            name, has_value, negatable = spec
            if negated and not negatable:
                raise ParseError(f"cannot negate parameter {words[w]!r}")
            if has_value and w == len(words) - 1:
                raise ParseError(f"parameter {words[w]!r} requires an argument")
            if not has_value:
                rule.fields[name] = not negated
                w += 1
            elif name == "chain":
                rule.fields[name] = words[w + 1]
                w += 2
            else:
                rule.fields[name] = Value(words[w + 1], negated)
                w += 2
        else:
            w += 1
        negated = False
    return rule


@dataclass
class Chain:
    name: str
    packets: int = 0
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Table:
    name: str
    chains: list[Chain] = field(default_factory=list)

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.chains if c.name == name), None)


@dataclass
class Dump:
    tables: list[Table] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    def chain(self, table: str, chain: str) -> Chain | None:
        t = self.table(table)
        return t.chain(chain) if t else None

    def text(self) -> str:
        """IPTablesDump.String()."""
        out = []
        for t in self.tables:
            out.append(f"*{t.name}")
            out += [f":{c.name} - [{c.packets}:{c.bytes}]" for c in t.chains]
            out += [r.raw for c in t.chains for r in c.rules]
            out += [f"-X {c.name}" for c in t.chains if c.deleted]
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)


_TABLE = re.compile(r"^\*(.*)$")
_CHAIN = re.compile(r"^:([^ ]*) - \[([0-9]*):([0-9]*)\]$")
_ADD = re.compile(r"^-A ([^ ]*) (.*)$")
_DEL = re.compile(r"^-X (.*)$")


def parse_dump(data: str) -> Dump:
    """ParseIPTablesDump."""
    dump = Dump()
    state = "table"
    t: Table | None = None
    for line in data.strip("\n").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if state == "table":
            m = _TABLE.match(line)
            if not m:
                raise ParseError(f"could not parse iptables data (table {len(dump.tables) + 1} "
                                 f"starts with {line!r} not a table name)")
            t = Table(m.group(1))
            dump.tables.append(t)
            state = "chains"
            continue
        if state == "chains":
            m = _CHAIN.match(line)
            if m:
                t.chains.append(Chain(m.group(1), int(m.group(2) or 0), int(m.group(3) or 0)))
                continue
            state = "rules"
        if _ADD.match(line):
            c = t.chain(_ADD.match(line).group(1))
            if c is None:
                raise ParseError(f"error parsing rule {line!r}: no such chain")
            if c.deleted:
                raise ParseError(f"cannot add rules to deleted chain {c.name!r}")
            c.rules.append(parse_rule(line))
        elif _DEL.match(line):
            c = t.chain(_DEL.match(line).group(1))
            if c is None:
                raise ParseError(f"error parsing rule {line!r}: no such chain")
            if c.rules:
                raise ParseError(f"cannot delete chain {c.name!r} after adding rules")
            c.deleted = True
        elif line == "COMMIT":
            state = "table"
        else:
            raise ParseError(f"error parsing rule {line!r}")
    if state != "table":
        raise ParseError("could not parse iptables data (no COMMIT line?)")
    return dump


# -- sortIPTablesRules / assertIPTablesRulesEqual / checkIPTablesRuleJumps ------

def _service_name(rule: Rule) -> str:
    name = rule.comment.value
    cut = [i for i in (name.find(" "), name.find(":")) if i != -1]
    return name[:min(cut)] if cut else name


def _stable_sort(items: list, less) -> None:
    """Go's sort.SliceStable (insertion sort in blocks of 20, then SymMerge), so
    that comparators which are not strict weak orders give Go's order too."""
    def swap(i, j):
        items[i], items[j] = items[j], items[i]

    def insertion(a, b):
        for i in range(a + 1, b):
            j = i
            while j > a and less(items[j], items[j - 1]):
                swap(j, j - 1)
                j -= 1

    def swap_range(a, b, n):
        for i in range(n):
            swap(a + i, b + i)

    def rotate(a, m, b):
        i, j = m - a, b - m
        while i != j:
            if i > j:
                swap_range(m - i, m, j)
                i -= j
            else:
                swap_range(m - i, m + j - i, i)
                j -= i
        swap_range(m - i, m, i)

    def sym_merge(a, m, b):
        if m - a == 1:
            i, j = m, b
            while i < j:
                h = (i + j) // 2
                if less(items[h], items[a]):
                    i = h + 1
                else:
                    j = h
            for k in range(a, i - 1):
                swap(k, k + 1)
            return
        if b - m == 1:
            i, j = a, m
            while i < j:
                h = (i + j) // 2
                if not less(items[m], items[h]):
                    i = h + 1
                else:
                    j = h
            for k in range(m, i, -1):
                swap(k, k - 1)
            return
        mid = (a + b) // 2
        n = mid + m
        if m > mid:
            start, r = n - b, mid
        else:
            start, r = a, m
        p = n - 1
        while start < r:
            c = (start + r) // 2
            if not less(items[p - c], items[c]):
                start = c + 1
            else:
                r = c
        end = n - start
        if start < m < end:
            rotate(start, m, end)
        if a < start < mid:
            sym_merge(a, start, mid)
        if mid < end < b:
            sym_merge(mid, end, b)

    n = len(items)
    block = 20
    a, b = 0, block
    while b <= n:
        insertion(a, b)
        a, b = b, b + block
    insertion(a, n)
    while block < n:
        a, b = 0, 2 * block
        while b <= n:
            sym_merge(a, a + block, b)
            a, b = b, b + 2 * block
        if a + block < n:
            sym_merge(a, a + block, n)
        block *= 2


def _by_service(r1: Rule, r2: Rule) -> bool:
    if r1.comment is None or r2.comment is None:
        return False
    return _service_name(r1) < _service_name(r2)


def _chain_key(name: str) -> tuple:
    if name == KUBE_NODEPORTS:
        return (0, name)
    if name == KUBE_SERVICES:
        return (1, name)
    return (2 if name.startswith("KUBE-") else 3, name)


def sort_rules(data: str) -> str:
    """sortIPTablesRules: tables by name, chains KUBE-NODEPORTS, KUBE-SERVICES, other
    KUBE-*, then the rest, each alphabetically; the KUBE-NODEPORTS and KUBE-SERVICES
    rules stably by the service name in their comment (the nat KUBE-SERVICES
    "must be the last rule" rule last)."""
    dump = parse_dump(data)
    dump.tables.sort(key=lambda t: t.name)
    for t in dump.tables:
        t.chains.sort(key=lambda c: _chain_key(c.name))
    for table in ("filter", "nat"):
        c = dump.chain(table, KUBE_NODEPORTS)
        if c is not None:
            _stable_sort(c.rules, _by_service)
    c = dump.chain("filter", KUBE_SERVICES)
    if c is not None:
        _stable_sort(c.rules, _by_service)
    c = dump.chain("nat", KUBE_SERVICES)
    if c is not None:
        def less(r1: Rule, r2: Rule) -> bool:
            if r1.comment is not None and "must be the last rule" in r1.comment.value:
                return False
            if r2.comment is not None and "must be the last rule" in r2.comment.value:
                return True
            return _by_service(r1, r2)
        _stable_sort(c.rules, less)
    return dump.text()


def rules_diff(expected: str, result: str) -> str:
    """assertIPTablesRulesEqual's comparison: "" when *result*, sorted, is *expected*."""
    expected = expected.lstrip(" \t\n")
    result = sort_rules(result.lstrip(" \t\n"))
    if expected == result:
        return ""
    return "".join(difflib.unified_diff(expected.splitlines(True), result.splitlines(True),
                                        "expected", "result"))


def chain_rules(table: str, chain: str, result: str) -> str:
    """assertIPTablesChainEqual's view: the rules of one chain, one a line."""
    c = parse_dump(result.lstrip(" \t\n")).chain(table, chain)
    return "".join(r.raw + "\n" for r in c.rules) if c else ""


def _find_all(lines: list[str], pattern: str) -> set[str]:
    rx = re.compile(pattern)
    out = set()
    for line in lines:
        m = rx.search(line)
        if m:
            out.add(m.group(1))
    return out


_KEEP = {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
         "KUBE-FORWARD", "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"}


def check_rule_jumps(data: str) -> str:
    """checkIPTablesRuleJumps: "" or what is wrong (a jump to a chain not created or
    without rules, rules added to a chain not created, a created chain unused)."""
    raw = data.lstrip("\n").split("COMMIT\n")
    if len(raw) < 3 or raw[-1] != "":
        return f"bad ruleData ({len(raw) - 1} tables)"
    for chunk in raw[:-1]:
        lines = chunk.strip("\n").split("\n")
        name = lines[0][1:]
        created = _find_all(lines, r"^:([^ ]*)") - _find_all(lines, r"-X ([^ ]*)")
        filled = _find_all(lines, r"-A ([^ ]*)")
        jumped = _find_all(lines, r"-j ([^ ]*)") - {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN",
                                                    "DNAT", "SNAT", "MASQUERADE"}
        missing = (jumped - created) | (filled - created)
        if missing:
            return f"some chains in {name} are used but were not created: {sorted(missing)}"
        empty = jumped - filled - {KUBE_NODEPORTS}
        if empty:
            return f"some chains in {name} are jumped to but have no rules: {sorted(empty)}"
        extra = created - jumped - _KEEP
        if extra:
            return f"some chains in {name} are created but not used: {sorted(extra)}"
    return ""


# -- the fake iptables ----------------------------------------------------------

_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
            "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
            "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}


class RestoreError(RuntimeError):
    pass


class FakeIptables:
    """iptablestest.FakeIPTables: one family's tables, fed by restores."""

    def __init__(self, ipv6: bool = False):
        self.ipv6 = ipv6
        self.dump = Dump([Table(t, [Chain(c) for c in cs]) for t, cs in _BUILTIN.items()])

    def ensure_chain(self, table: str, chain: str) -> None:
        t = self.dump.table(table)
        if t.chain(chain) is None:
            t.chains.append(Chain(chain))

    def ensure_rule(self, position: str, table: str, chain: str, *args: str) -> None:
        """EnsureRule(Append / Prepend): add "-A chain args" unless present."""
        line = f"-A {chain} " + " ".join(args)       # unquoted, as the fake writes it
        c = self.dump.chain(table, chain)
        if any(r.raw == line for r in c.rules):
            return
        rule = parse_rule(line)
        if position == "prepend":
            c.rules.insert(0, rule)
        else:
            c.rules.append(rule)

    def ensure_jumps(self) -> None:
        """What a full sync does before restoring: kube-proxy's chain jumps."""
        for jump in JUMPS:
            table, dst, src, _, _ = jump
            self.ensure_chain(table, dst)
            self.ensure_rule("prepend", table, src, *jump_rule(jump))

    def restore(self, data: str) -> None:
        """RestoreAll(data, NoFlushTables, RestoreCounters); all or nothing."""
        new = parse_dump(data)
        before = copy.deepcopy(self.dump)
        try:
            for nt in new.tables:
                old = self.dump.table(nt.name)
                if old is None:
                    raise RestoreError(f"no such table {nt.name!r}")
                for nc in nt.chains:
                    oc = old.chain(nc.name)
                    if oc is None and not nc.deleted:
                        old.chains.append(nc)
                    elif oc is not None and nc.deleted:
                        old.chains.remove(oc)
                    elif oc is not None:
                        oc.rules = nc.rules
                        oc.packets, oc.bytes = nc.packets, nc.bytes
                names = {c.name for c in old.chains}
                for c in old.chains:
                    for r in c.rules:
                        j = r.jump
                        if j is not None and j.value.startswith("KUBE-") and j.value not in names:
                            raise RestoreError(f"{nt.name}: {r.raw!r} jumps to a deleted chain")
        except RestoreError:
            self.dump = before
            raise


# -- tracing ----------------------------------------------------------------------

def _address_matches(address: Value, ip_str: str) -> bool:
    ip = ipaddress.ip_address(ip_str)
    if "/" in address.value:
        net = ipaddress.ip_network(address.value, strict=False)
        matches = ip.version == net.version and ip in net
    else:
        matches = ip == ipaddress.ip_address(address.value)
    return matches != address.negated


@dataclass
class Tracer:
    ipt: FakeIptables
    local_ips: set[str]
    matches: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    mark_masq: bool = False

    def rule_matches(self, rule: Rule, src: str, proto: str, dst: str, dport: str) -> bool:
        if rule.source_address is not None and not _address_matches(rule.source_address, src):
            return False
        if rule.source_type is not None:
            if not rule.source_type.matches("LOCAL" if src in self.local_ips else "not-matched"):
                return False
        if rule.protocol is not None and not rule.protocol.matches(proto):
            return False
        if rule.destination_address is not None and not _address_matches(rule.destination_address,
                                                                          dst):
            return False
        if rule.destination_type is not None:
            if not rule.destination_type.matches("LOCAL" if dst in self.local_ips
                                                 else "not-matched"):
                return False
        if rule.destination_port is not None and not rule.destination_port.matches(dport):
            return False
        if (rule.affinity_check is not None or rule.mark_check is not None
                or rule.ct_state_check is not None):
            return False
        return True

    def run_chain(self, table: str, chain: str, src: str, proto: str, dst: str,
                  dport: str) -> bool:
        c = self.ipt.dump.chain(table, chain)
        if c is None:
            return False
        for rule in c.rules:
            if rule.jump is None:
                continue
            if not self.rule_matches(rule, src, proto, dst, dport):
                continue
            self.matches.append(rule.raw)
            target = rule.jump.value
            if target == "KUBE-MARK-MASQ":
                self.mark_masq = True
                continue
            if target in ("ACCEPT", "REJECT", "DROP"):
                self.outputs.append(target)
                return True
            if target == "DNAT":
                self.outputs.append(rule.dnat_destination.value)
                return True
            terminated = self.run_chain(table, target, src, proto, dst, dport)
            if terminated and rule.probability is None:
                return True
        return False


def trace_packet(ipt: FakeIptables, src: str, proto: str, dst: str, dport: int,
                 node_ips) -> tuple[list[str], str, bool]:
    """tracePacket: (matched rules, "ip:port, ..." or ACCEPT/DROP/REJECT, masqueraded)."""
    tracer = Tracer(ipt, {"127.0.0.1", "::1", *node_ips})
    port = str(dport)
    tracer.run_chain("nat", "PREROUTING", src, proto, dst, port)
    if tracer.outputs:
        dst = tracer.outputs[0].split(":")[0]
    for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS",
                  "KUBE-PROXY-FIREWALL"):
        tracer.run_chain("filter", chain, src, proto, dst, port)
    return tracer.matches, ", ".join(tracer.outputs), tracer.mark_masq


@dataclass(frozen=True)
class Flow:
    """packetFlowTest."""
    name: str
    source: str
    dest: str
    port: int
    output: str
    masq: bool = False
    protocol: str = "TCP"


def flow_failures(ipt: FakeIptables, node_ips, flows) -> list[str]:
    """runPacketFlowTests: one message per flow whose result differs."""
    out = []
    for f in flows:
        matched, output, masq = trace_packet(ipt, f.source, f.protocol.lower(), f.dest, f.port,
                                             node_ips)
        errs = []
        if output != f.output:
            errs.append(f"wrong output: expected {f.output!r} got {output!r}")
        if masq != f.masq:
            errs.append(f"wrong masq: expected {f.masq} got {masq}")
        if errs:
            out.append(f"{f.name!r} ({f.protocol} {f.source} -> {f.dest}:{f.port}): "
                       + "; ".join(errs) + "\n  by matching:\n    " + "\n    ".join(matched))
    return out
