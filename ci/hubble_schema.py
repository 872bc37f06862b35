"""Checks chainbench's schema of Hubble's API (proto/) against Cilium's api/v1.

``python -m ci.hubble_schema /path/to/cilium/api/v1`` (``make hubble-schema
CILIUM_API=<dir>``) compiles both copies of flow/flow.proto,
observer/observer.proto and relay/relay.proto with grpcio-tools into descriptor
sets and holds ours to what wire and protojson compatibility need:

* every message, enum and service of ours is in Cilium's under the same full name;
* every field of ours has Cilium's number, type, type_name, label, json_name and
  oneof; a field of Cilium's that ours lacks is a mismatch unless its type is a
  message ours does not define (the parts of Hubble's API chainbench leaves out);
* every enum of ours has exactly Cilium's values (name and number);
* every method of ours has Cilium's request and response types and streaming.

It prints each mismatch on a line and exits 1, else one summary line and 0; a
missing directory or a schema protoc rejects is one line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "proto"
PROTO_FILES = ("flow/flow.proto", "observer/observer.proto", "relay/relay.proto")

_FDP = descriptor_pb2.FieldDescriptorProto


class SchemaError(Exception):
    """A schema that cannot be read: a file missing, or protoc's error."""


def compile_set(root: Path, files: tuple[str, ...] = PROTO_FILES) -> descriptor_pb2.FileDescriptorSet:
    """``files`` (relative to ``root``) and their imports compiled by grpcio-tools' protoc."""
    root = Path(root)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise SchemaError(f"{root / missing[0]}: no such file")
    with tempfile.TemporaryDirectory(prefix="hubble-schema-") as tmp:
        out = Path(tmp) / "set.binpb"
        # `python -m grpc_tools.protoc` adds the well-known types' include directory itself.
        run = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{root}",
                              f"--descriptor_set_out={out}", "--include_imports", *files],
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            first = (run.stderr.strip().splitlines() or [f"protoc exited {run.returncode}"])[0]
            raise SchemaError(f"{root}: {first}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@dataclasses.dataclass
class _Index:
    messages: dict[str, descriptor_pb2.DescriptorProto]
    enums: dict[str, descriptor_pb2.EnumDescriptorProto]
    services: dict[str, descriptor_pb2.ServiceDescriptorProto]


def _index(fds: descriptor_pb2.FileDescriptorSet, only: tuple[str, ...] | None = None) -> _Index:
    """Every definition by full name (no leading dot), of the files ``only`` names or all."""
    idx = _Index({}, {}, {})

    def walk(prefix: str, messages, enums) -> None:
        for e in enums:
            idx.enums[prefix + e.name] = e
        for m in messages:
            idx.messages[prefix + m.name] = m
            walk(f"{prefix}{m.name}.", m.nested_type, m.enum_type)

    for f in fds.file:
        if only is not None and f.name not in only:
            continue
        prefix = f"{f.package}." if f.package else ""
        walk(prefix, f.message_type, f.enum_type)
        for s in f.service:
            idx.services[prefix + s.name] = s
    return idx


def _oneof(msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> str | None:
    return msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None


def _field_facts(msg, field) -> dict[str, object]:
    return {"number": field.number, "type": _FDP.Type.Name(field.type), "type_name": field.type_name,
            "label": _FDP.Label.Name(field.label), "json_name": field.json_name,
            "oneof": _oneof(msg, field), "proto3_optional": field.proto3_optional}


@dataclasses.dataclass
class Report:
    """What compare() found: the mismatches, one line each, and what it checked."""
    mismatches: list[str]
    messages: int = 0
    fields: int = 0
    enum_values: int = 0
    methods: int = 0

    def summary(self, against: str) -> str:
        return (f"{self.messages} messages, {self.fields} fields, {self.enum_values} enum values, "
                f"{self.methods} methods checked against {against}")


def compare(ours_set: descriptor_pb2.FileDescriptorSet, theirs_set: descriptor_pb2.FileDescriptorSet,
            files: tuple[str, ...] = PROTO_FILES) -> Report:
    """Holds the definitions of ours in ``files`` to Cilium's (see the module docstring)."""
    ours, theirs = _index(ours_set, files), _index(theirs_set)
    ours_files = {f.name: f.package for f in ours_set.file if f.name in files}
    rep = Report([])
    bad = rep.mismatches.append
    for f in theirs_set.file:
        if f.name in ours_files and f.package != ours_files[f.name]:
            bad(f"{f.name}: package {ours_files[f.name]!r}, Cilium's {f.package!r}")

    for name, msg in ours.messages.items():
        rep.messages += 1
        other = theirs.messages.get(name)
        if other is None:
            bad(f"{name}: message not in Cilium's schema")
            continue
        their_fields = {f.name: f for f in other.field}
        for field in msg.field:
            rep.fields += 1
            where = f"{name}.{field.name}"
            tf = their_fields.get(field.name)
            if tf is None:
                bad(f"{where}: field not in Cilium's schema")
                continue
            mine, cil = _field_facts(msg, field), _field_facts(other, tf)
            for key in mine:
                if mine[key] != cil[key]:
                    bad(f"{where}: {key} {mine[key]!r}, Cilium's {cil[key]!r}")
        have = {f.name for f in msg.field}
        for tf in other.field:
            left_out_type = tf.type == _FDP.TYPE_MESSAGE and tf.type_name.lstrip(".") not in ours.messages
            if tf.name not in have and not left_out_type:
                bad(f"{name}.{tf.name}: missing (Cilium's field {tf.number}, {_FDP.Type.Name(tf.type)})")

    for name, enum in ours.enums.items():
        other = theirs.enums.get(name)
        if other is None:
            bad(f"{name}: enum not in Cilium's schema")
            continue
        mine = {v.name: v.number for v in enum.value}
        cil = {v.name: v.number for v in other.value}
        rep.enum_values += len(mine)
        for vname, num in mine.items():
            if vname not in cil:
                bad(f"{name}.{vname}: enum value not in Cilium's schema")
            elif cil[vname] != num:
                bad(f"{name}.{vname}: number {num}, Cilium's {cil[vname]}")
        for vname, num in cil.items():
            if vname not in mine:
                bad(f"{name}.{vname}: missing (Cilium's value {num})")

    for name, svc in ours.services.items():
        other = theirs.services.get(name)
        if other is None:
            bad(f"{name}: service not in Cilium's schema")
            continue
        their_methods = {m.name: m for m in other.method}
        for m in svc.method:
            rep.methods += 1
            tm = their_methods.get(m.name)
            if tm is None:
                bad(f"{name}.{m.name}: method not in Cilium's schema")
                continue
            for key in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(m, key) != getattr(tm, key):
                    bad(f"{name}.{m.name}: {key} {getattr(m, key)!r}, Cilium's {getattr(tm, key)!r}")
        have = {m.name for m in svc.method}
        for tm in other.method:
            if tm.name not in have:
                bad(f"{name}.{tm.name}: method missing")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ci.hubble_schema", description=__doc__.splitlines()[0])
    ap.add_argument("cilium_api", type=Path, help="Cilium's api/v1 directory (with flow/, observer/, relay/)")
    ap.add_argument("--ours", type=Path, default=OURS, help=f"chainbench's schema directory (default {OURS})")
    args = ap.parse_args(argv)
    try:
        rep = compare(compile_set(args.ours), compile_set(args.cilium_api))
    except SchemaError as e:
        print(f"hubble-schema: {e}", file=sys.stderr)
        return 2
    for line in rep.mismatches:
        print(line)
    if rep.mismatches:
        print(f"{len(rep.mismatches)} mismatches; {rep.summary(str(args.cilium_api))}", file=sys.stderr)
        return 1
    print(rep.summary(str(args.cilium_api)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
