"""chainbench: a chained eBPF datapath and its benchmark harness."""
