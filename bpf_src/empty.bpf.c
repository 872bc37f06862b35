// SPDX-License-Identifier: GPL-2.0
/* The floor every measurement is compared with: programs that only return
 * "pass" at each hook chainbench uses.  Benchmarks report each program's
 * cost as a ratio to these, measured in the same run.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}
