/* SPDX-License-Identifier: GPL-2.0 */
/* Per-CPU packet and byte counters by (endpoint, reason, direction), as
 * Cilium's metrics map keeps them per reason: reason 0 is "forwarded", any
 * other value is a drop reason from drop.h.  The harness reads this map to
 * name a packet's drop reason and to print counters per endpoint and reason.
 *
 * API: metrics_count(endpoint_id, reason, dir, bytes)
 */
#ifndef CB_METRICS_H
#define CB_METRICS_H

#include "lib/common.h"

#define METRIC_FORWARDED 0

struct metrics_key {
	__u8  reason;		/* 0 = forwarded, else enum drop_reason */
	__u8  dir;		/* CB_DIR_INGRESS / CB_DIR_EGRESS */
	__u16 endpoint_id;	/* 0: not an endpoint's program (the node's, the parser's) */
};

#ifndef CB_METRICS_MAX
#define CB_METRICS_MAX 1024	/* reasons x directions, with room to spare */
#endif

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, CB_METRICS_MAX);
	__type(key, struct metrics_key);
	__type(value, struct traffic_counter);
} cb_metrics SEC(".maps");

static __always_inline void metrics_count(__u16 endpoint_id, __u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir, .endpoint_id = endpoint_id };
	struct traffic_counter *val, init = { .packets = 1, .bytes = bytes };

	val = bpf_map_lookup_elem(&cb_metrics, &key);
	if (likely(val)) {
		/* Per-CPU value: no other CPU writes it, plain adds are safe. */
		val->packets += 1;
		val->bytes += bytes;
		return;
	}
	/* First packet for this key.  If another CPU created the entry in the
	 * meantime, NOEXIST fails and this CPU's slot exists now: add to it. */
	if (bpf_map_update_elem(&cb_metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	val = bpf_map_lookup_elem(&cb_metrics, &key);
	if (val) {
		val->packets += 1;
		val->bytes += bytes;
	}
}

#endif /* CB_METRICS_H */
