// SPDX-License-Identifier: GPL-2.0
/* Test fixture for the loader: one map of each kind the harness handles, a
 * rodata knob, and a tc program that touches all of them so tests can see
 * the kernel's side of every operation.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/common.h"
#include "fixture.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 event_tag = 0;
const volatile __u8 verdict = TC_ACT_OK;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct fixture_key);
	__type(value, struct fixture_value);
} hash_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} array_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct traffic_counter);
} percpu_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} lru_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

__u64 seq = 0;

SEC("tc")
int fixture_tc(struct __sk_buff *skb)
{
	struct fixture_key key = { .addr = skb->mark, .port = 80, .proto = 6 };
	struct fixture_value *val;
	struct traffic_counter *pc;
	struct fixture_event *ev;
	__u32 zero = 0;

	/* A packet whose mark matches a hash_map entry counts a hit there. */
	val = bpf_map_lookup_elem(&hash_map, &key);
	if (val)
		__sync_fetch_and_add(&val->hits, 1);
	pc = bpf_map_lookup_elem(&percpu_map, &zero);
	if (pc) {
		pc->packets += 1;
		pc->bytes += skb->len;
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (ev) {
		/* Plain, not __sync_fetch_and_add: a fetching atomic needs 5.12 (the
		 * kernel matrix runs this on 5.10), and the tests run it from one thread. */
		ev->seq = seq++;
		ev->len = skb->len;
		ev->tag = event_tag;
		ev->mark = skb->mark;
		ev->pad = 0;
		bpf_ringbuf_submit(ev, 0);
	}
	return verdict;
}

/* Counts packets that processes of the cgroup it is attached to send. */
SEC("cgroup_skb/egress")
int fixture_cgroup_egress(struct __sk_buff *skb)
{
	__u32 key = 1;
	__u64 *count = bpf_map_lookup_elem(&array_map, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 1;	/* allow */
}
