// SPDX-License-Identifier: GPL-2.0
/* Test program for the flow observer: writes the packet it is run with, a
 * whole struct cb_event, into a node-style cb_events ring buffer (small, so
 * tests can fill it and wrap it).  Knobs: discard reserves then discards the
 * record; short_record submits a record of another size (8 bytes).  A full
 * ring counts the record in cb_events_lost, as the datapath does.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define CB_EVENTS_SIZE (1 << 14)
#include "lib/events.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u8 discard = 0;
const volatile __u8 short_record = 0;

SEC("tc")
int write_event(struct __sk_buff *skb)
{
	struct cb_event *e;

	if (short_record) {
		__u64 *small = bpf_ringbuf_reserve(&cb_events, sizeof(*small), 0);

		if (!small) {
			events_count_lost();
			return TC_ACT_SHOT;
		}
		*small = skb->len;
		bpf_ringbuf_submit(small, 0);
		return TC_ACT_OK;
	}
	e = bpf_ringbuf_reserve(&cb_events, sizeof(*e), 0);
	if (!e) {
		events_count_lost();
		return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, 0, e, sizeof(*e)) < 0 || discard) {
		bpf_ringbuf_discard(e, 0);
		return TC_ACT_SHOT;
	}
	bpf_ringbuf_submit(e, 0);
	return TC_ACT_OK;
}
