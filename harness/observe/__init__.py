"""Flow visibility, as Hubble gives it: the datapath's events (bpf_src/lib/events.h)
decoded into Hubble's ``flow.Flow``, the per-node observer that keeps them and
serves Hubble's Observer API, ``chainbench observe``'s filters and outputs,
Hubble's Prometheus metrics and the service map."""
