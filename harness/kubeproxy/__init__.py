"""What kube-proxy (v1.31+) programs, rendered from chainbench's LB state.

- ``model``: the service ports kube-proxy would see (one per Service port and
  protocol, IPv4 only), built from a :class:`harness.lb.model.LbState`;
- ``names``: kube-proxy's chain, set and map names (hashes as in
  pkg/proxy/iptables and pkg/proxy/nftables);
- ``iptables``: ``iptables-restore`` input for the filter and nat tables, per
  family (``ip6tables-restore`` for IPv6), full or partial syncs;
- ``nftables``: one ``nft -f`` transaction for table ``ip kube-proxy``;
- ``apply``: loading either into a project (``cb-*``) namespace, full or
  partial syncs, timed.

HostPort frontends are skipped (the portmap CNI plugin handles hostPort, not
kube-proxy).  The iptables renderer covers both families (kube-proxy's
dual-stack proxier); see ``nftables`` for what it renders.
"""
