"""Running packets through programs with BPF_PROG_TEST_RUN: the runner, pcap input,
and packet helpers for tests."""
