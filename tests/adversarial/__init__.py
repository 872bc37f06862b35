"""Adversarial test kit for the datapath, written from docs/semantics (the spec) and the
RFCs, not from the project's reference models.

Modules, one job each:
  node        one node (shared maps) with pods, services, policies and ipcache, a fast
              bytes-in/bytes-out runner and cheap map snapshots (shared with the
              differential stage)
  checksum    Internet checksums (RFC 1071/768/793/4443) over raw frames
  invariants  the checks every packet's outcome must meet (spec: "Invariants")
  corpus      deterministic malformed-packet corpus and the seeded random mutator
"""
