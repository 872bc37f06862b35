"""Adversarial test kit for the datapath, written from the RFCs and the datapath's
documented behaviour (README: "The veth as a security boundary", "Policy", "The service
load balancer"), not from the project's reference models, which share its assumptions.

Modules, one job each:
  node        one node (shared maps) with pods, services, policies and ipcache, a fast
              bytes-in/bytes-out runner and cheap map snapshots (shared with the
              differential stage)
  wire        a parser of raw frames and Internet checksums (RFC 1071/768/793/4443/8200)
  invariants  the checks every packet's outcome must meet
  corpus      deterministic malformed-packet corpus and the seeded random mutator
  drive       runs packets through the node, sorting failures into findings
  fuzz        `make fuzz`: the corpus, then seeded mutations, up to a packet count
  rfc         packet building and checksums for the oracle (independent of wire)
  oracle      a one-node model from the RFCs: verdict and exact output bytes
  gen         seeded flows and packet sequences for the differential stage
"""
