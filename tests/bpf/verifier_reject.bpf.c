// SPDX-License-Identifier: GPL-2.0
/* Test fixture: compiles, but the verifier must refuse it (a packet read
 * without a bounds check), so the loader's error path can be tested. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int unchecked_read(struct __sk_buff *skb)
{
	__u8 *data = (void *)(long)skb->data;

	return data[20] == 6 ? TC_ACT_SHOT : TC_ACT_OK;
}
