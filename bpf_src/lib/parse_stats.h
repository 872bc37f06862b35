/* SPDX-License-Identifier: GPL-2.0 */
/* Per-protocol packet counters kept by parse_stats.bpf.c, indexed by
 * enum stat_class (the harness reads the class names from this header).
 */
#ifndef CB_PARSE_STATS_H
#define CB_PARSE_STATS_H

#include "lib/common.h"

enum stat_class {
	STAT_IPV4 = 0,
	STAT_IPV6,
	STAT_ARP,
	STAT_L3_OTHER,
	STAT_TCP,
	STAT_UDP,
	STAT_ICMP,
	STAT_ICMPV6,
	STAT_L4_OTHER,
	STAT_FRAGMENT,		/* also counted under its L3 class */
	STAT_MALFORMED,		/* headers cut short or inconsistent */
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);	/* enum stat_class: array keys must be plain ints */
	__type(value, struct traffic_counter);
} cb_parse_stats SEC(".maps");

#endif /* CB_PARSE_STATS_H */
