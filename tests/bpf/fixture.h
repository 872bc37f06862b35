/* SPDX-License-Identifier: GPL-2.0 */
/* Structs of the loader's test fixture (mirrored in tests/fixture_structs.py). */
#ifndef CB_TEST_FIXTURE_H
#define CB_TEST_FIXTURE_H

struct fixture_key {
	__u32 addr;
	__u16 port;
	__u8  proto;
	__u8  pad;
};

struct fixture_value {
	__u64 hits;
	__u32 backend;
	__u16 flags;
	__u16 pad;
};

struct fixture_event {
	__u64 seq;
	__u32 len;
	__u32 tag;
	__u32 mark;
	__u32 pad;
};

#endif
