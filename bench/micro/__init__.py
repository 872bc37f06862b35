"""The micro suite: ns per packet of each datapath case under BPF_PROG_TEST_RUN."""
