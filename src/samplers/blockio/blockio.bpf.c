// SPDX-License-Identifier: GPL-2.0
/* blockio: operations and bytes per op (per-CPU banks, counted at
 * completion), and histograms of request size and issue-to-completion
 * latency per op, for all disks together and per disk. Issue times are kept
 * in a hash map keyed by request: the kernel offers no per-request storage,
 * and its own issue stamp (io_start_time_ns) is only set while block
 * statistics are on. One update and one delete per request.
 *
 * The all-disk figures count requests to disks backed by a device (the
 * gendisk's device has a parent: a PCI, virtio, SCSI, NVMe, MMC ... device).
 * Virtual request-based disks (loop, nbd, ublk, request-based device-mapper)
 * pass their IO on to another disk or to the network, where it is counted
 * once: counting them too would count the same bytes twice. The per-disk
 * histograms cover every disk, virtual ones included, each in its own slot
 * (named as in /sys/block); device_slots disks get one, the rest share
 * the slot after. Partitions, md and most device-mapper targets issue no
 * requests of their own. */
#include "rezolus.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

/* Whether the request goes to a disk with no parent device (a virtual one).
 * Kernels without request_queue.disk (before 5.15) count every disk. */
static __always_inline bool on_virtual_disk(struct request *rq)
{
	if (!bpf_core_field_exists(rq->q->disk))
		return false;
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return false;
	return BPF_CORE_READ(disk, part0, bd_device.parent) == NULL;
}

#define REQ_OP_MASK 0xff
/* REQ_OP_READ, REQ_OP_WRITE, REQ_OP_FLUSH, REQ_OP_DISCARD are 0..3 */
#define OPS 4
enum { OPERATIONS = 0, BYTES = OPS, BLOCKIO_COUNTERS = 2 * OPS };
enum { LATENCY = 0, SIZE = OPS, BLOCKIO_HISTOGRAMS = 2 * OPS };

DEFINE_BANK(blockio_bank, BLOCKIO_COUNTERS);

BANK_MAP(counters, blockio_bank);

HISTOGRAM_MAP(histograms, BLOCKIO_HISTOGRAMS);

/* Disks with a slot of their own, by dev_t, then the shared overflow slot.
 * Userspace sizes both maps to device_slots (disks present at start, plus
 * room for more) before load: each slot's histograms take 31 KiB. */
#define BLOCKIO_MAX_DEVICES 256
const volatile u32 device_slots = 16;
NAMED_SLOTS(devices, BLOCKIO_MAX_DEVICES);

/* per disk slot: BLOCKIO_HISTOGRAMS histograms (latency per op, size per op) */
HISTOGRAM_MAP(device_histograms, (BLOCKIO_MAX_DEVICES + 1) * BLOCKIO_HISTOGRAMS);

static __always_inline u32 device_slot(struct request *rq)
{
	u32 n = device_slots < BLOCKIO_MAX_DEVICES ? device_slots : BLOCKIO_MAX_DEVICES;
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return n;
	u64 id = (1ULL << 63) | ((u64)BPF_CORE_READ(disk, major) << 32) |
		 (u32)BPF_CORE_READ(disk, first_minor);
	bool claimed;
	u32 slot = slot_of(&devices, n, id, &claimed);
	if (claimed)
		name_slot(&devices, slot, __builtin_preserve_access_index(&disk->disk_name[0]));
	return slot;
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u64);
	__type(value, u64);
	__uint(max_entries, 65536);
} issued SEC(".maps");

static __always_inline void issue(struct request *rq)
{
	u64 key = (u64)rq;
	u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&issued, &key, &now, BPF_ANY);
}

static __always_inline void complete(struct request *rq, u32 op, unsigned int nr_bytes)
{
	u64 key = (u64)rq;
	u64 *start = bpf_map_lookup_elem(&issued, &key);
	bool timed = start != NULL;
	u64 latency = timed ? bpf_ktime_get_ns() - *start : 0;
	if (timed)
		bpf_map_delete_elem(&issued, &key);
	if (op >= OPS)
		return;
	/* A read or write with no data is the empty request an fsync's cache
	 * flush rides on (REQ_PREFLUSH): the block layer completes it without
	 * issuing it, and the flush itself is counted as op flush. */
	if (nr_bytes == 0 && op <= 1)
		return;
	u32 base = device_slot(rq) * BLOCKIO_HISTOGRAMS;
	histogram_record(&device_histograms, base + SIZE + op, nr_bytes);
	if (timed)
		histogram_record(&device_histograms, base + LATENCY + op, latency);
	if (on_virtual_disk(rq))
		return;
	struct blockio_bank *bank = bank_of_this_cpu(&counters);
	if (bank) {
		bank->counters[OPERATIONS + op] += 1;
		bank->counters[BYTES + op] += nr_bytes;
	}
	histogram_record(&histograms, SIZE + op, nr_bytes);
	if (timed)
		histogram_record(&histograms, LATENCY + op, latency);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	issue(rq);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	complete(rq, rq->cmd_flags & REQ_OP_MASK, nr_bytes);
	return 0;
}

/* The compatibility path: raw tracepoints. Kernels before 5.11 pass
 * block_rq_issue the request queue first and the request second; userspace
 * sets this from the tracepoint's arguments in the BTF in use. */
const volatile bool issue_has_queue = false;

SEC("raw_tp/block_rq_issue")
int BPF_PROG(block_rq_issue_compat)
{
	struct request *rq;
	/* the barriers keep the compiler from loading an argument the kernel
	 * does not pass outside its branch (the kernel refuses to attach a
	 * program that reads past the tracepoint's arguments) */
	if (issue_has_queue) {
		barrier();
		rq = (void *)ctx[1];
	} else {
		barrier();
		rq = (void *)ctx[0];
	}
	issue(rq);
	return 0;
}

SEC("raw_tp/block_rq_complete")
int BPF_PROG(block_rq_complete_compat, struct request *rq, int error, unsigned int nr_bytes)
{
	complete(rq, BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK, nr_bytes);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
