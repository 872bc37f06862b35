"""Running packets through a program with BPF_PROG_TEST_RUN, one result each.

The engine behind ``chainbench test-run`` and the test fixtures: resolve a
program by name among the compiled objects, read packets from a pcap, run
each, and name the outcome: the verdict from the hook's return code and, for
drops, the reason the program counted in its ``cb_metrics`` map.
"""
from __future__ import annotations

import errno as _errno
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.errors import InputError
from harness import paths
from harness.abi import drop_reasons
from harness.abi import structs  # noqa: F401  (registers the mirrors Collection.load checks)
from harness.bpf import BpfError, Collection, Program, RunResult
from harness.bpf.collection import list_programs
from harness.testrun.pcapfile import PcapError, read_capture

METRICS_MAP = "cb_metrics"

# pcap link types we accept; IP-only captures get a synthetic Ethernet header.
_DLT_EN10MB, _DLT_RAW, _LINKTYPE_IPV4, _LINKTYPE_IPV6 = 1, 101, 228, 229
_ETH_V4 = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
_ETH_V6 = _ETH_V4[:12] + b"\x86\xdd"


class ProgramNotFound(InputError, LookupError):
    pass


@dataclass(frozen=True)
class PacketResult:
    index: int
    retval: int
    verdict: str
    drop_reason: int | None
    duration_ns: int
    packet_out: bytes

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "retval": self.retval,
            "verdict": self.verdict,
            "drop_reason": self.drop_reason,
            "drop_reason_desc": (drop_reasons.describe(self.drop_reason)
                                 if self.drop_reason is not None else None),
            "duration_ns": self.duration_ns,
            "packet_out": self.packet_out.hex(),
        }


def resolve_program(spec: str, search: list[Path] | None = None) -> tuple[Path, str]:
    """Find the object and program named by *spec*.

    Forms: ``NAME`` (a program in any compiled datapath object),
    ``OBJECT:NAME`` (OBJECT as in bpf_src/OBJECT.bpf.c, or a path to a .o).
    """
    objects = search if search is not None else paths.datapath_objects()
    if ":" in spec:
        obj, name = spec.rsplit(":", 1)
        path = Path(obj) if obj.endswith(".o") else paths.bpf_object(obj)
        if not path.is_file():
            raise ProgramNotFound(f"no compiled object {path} (run `make build`)")
        return path, name
    found = [(o, spec) for o in objects if spec in program_names(o)]
    if not found:
        known = ", ".join(sorted({p for o in objects for p in program_names(o)})) or "none built"
        raise ProgramNotFound(f"no program {spec!r} in {paths.bpf_objects_dir()} (known: {known})")
    if len(found) > 1:
        raise ProgramNotFound(f"program {spec!r} is in several objects: "
                              + ", ".join(o.stem.removesuffix(".bpf") for o, _ in found)
                              + "; name it as OBJECT:PROGRAM")
    return found[0]


def compiled_programs() -> list[dict]:
    """Every program of the compiled datapath objects: its object, name, type and the
    object's path, as ``chainbench programs`` lists them."""
    return [{"object": o.name.removesuffix(".bpf.o"), "program": name, "type": ptype,
             "path": str(o)}
            for o in paths.datapath_objects()
            for name, ptype in sorted(list_programs(str(o)).items())]


def program_names(obj: Path) -> set[str]:
    """Program names in an object file (opened, not loaded into the kernel)."""
    return set(list_programs(str(obj)))


def read_pcap(path: str | Path) -> Iterator[bytes]:
    """Packets of a pcap or pcapng file (``-``: standard input) as Ethernet frames.
    A damaged or empty capture is a PcapError (harness.testrun.pcapfile reads strictly)."""
    if str(path) == "-":
        name, data = "<stdin>", sys.stdin.buffer.read()
    else:
        name = str(path)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise PcapError(f"{path}: no such file") from None
        except OSError as exc:
            raise PcapError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for i, packet in enumerate(read_capture(data, name)):
        yield _as_ethernet(packet.data, packet.linktype, f"{name}: packet {i}")


def _as_ethernet(data: bytes, linktype: int, path) -> bytes:
    if not data:
        raise PcapError(f"{path}: no data (caplen 0)")
    if linktype == _DLT_EN10MB:
        if len(data) < 14:      # BPF_PROG_TEST_RUN refuses less than an Ethernet header
            raise PcapError(f"{path}: {len(data)} bytes, shorter than an Ethernet header (14)")
        return data
    if linktype in (_DLT_RAW, _LINKTYPE_IPV4, _LINKTYPE_IPV6):
        return (_ETH_V6 if data[0] >> 4 == 6 else _ETH_V4) + data
    raise PcapError(f"{path}: link type {linktype} is not supported (Ethernet or raw IP)")


class Runner:
    """Runs packets through one program, naming drop reasons from cb_metrics."""

    def __init__(self, collection: Collection, program: str):
        if program not in collection.programs:
            raise ProgramNotFound(f"no program {program!r} in {collection.path} "
                                  f"(has: {', '.join(sorted(collection.programs))})")
        self.collection = collection
        self.program: Program = collection.programs[program]
        self._metrics = collection.maps.get(METRICS_MAP)

    def _drop_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        if self._metrics is None:
            return counts
        for key, per_cpu in self._metrics.items():
            if key.reason:
                counts[key.reason] = counts.get(key.reason, 0) + sum(v.packets for v in per_cpu)
        return counts

    def run(self, data: bytes, index: int = 0, repeat: int = 1, ctx=None) -> PacketResult:
        before = self._drop_counts()
        result: RunResult = self.program.test_run(data, ctx=ctx, repeat=repeat)
        after = self._drop_counts()
        grown = {r: n - before.get(r, 0) for r, n in after.items() if n > before.get(r, 0)}
        reason = max(grown, key=grown.get) if grown else None
        return PacketResult(index, result.retval, result.verdict, reason, result.duration_ns,
                            result.data_out)


def run_packets(runner: Runner, packets: list[bytes], repeat: int = 1) -> Iterator[PacketResult]:
    """Run *packets* in order; a packet the kernel refuses is named in the error."""
    for i, pkt in enumerate(packets):
        try:
            yield runner.run(pkt, i, repeat)
        except BpfError as exc:
            if exc.errno == _errno.EINVAL:
                raise BpfError(f"packet {i} ({len(pkt)} bytes)", exc.errno, str(exc)) from None
            raise
