/* Shared helpers for rezolus BPF programs: the histogram bucketing scheme
 * and per-CPU counter banks. The Rust side of both lives in src/bpf.rs. */
#ifndef REZOLUS_H
#define REZOLUS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* The `histogram` crate's log-linear scheme with grouping power 3 and max
 * value power 64: values below 2^(GP+1) get a bucket each; above, each power
 * of two is split into 2^GP buckets. 16 + 60 * 8 = 496 buckets. */
#define HISTOGRAM_GROUPING_POWER 3
#define HISTOGRAM_BUCKETS 496

/* bpf_rdonly_cast (Linux 6.2): `obj` as an untrusted read-only pointer of
 * kernel BTF type `btf_id` (0: plain memory), through which loads that would
 * fault read zero. A kfunc, so libbpf needs the running kernel's own BTF to
 * load any object that declares it, whatever programs are loaded. Each such
 * object therefore has a twin built with REZOLUS_WITHOUT_KSYMS (build.rs),
 * opened on the compatibility path, where no program calls a kfunc: there
 * this is a plain cast, in code the twin never loads. */
#ifdef REZOLUS_WITHOUT_KSYMS
#define bpf_rdonly_cast(obj, btf_id) ((void *)(obj))
#else
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#endif

/* Index of the highest set bit of a non-zero value (floor(log2(v))), by
 * binary search: the BPF instruction set has no count-leading-zeros. */
static __always_inline u32 highest_bit(u64 v)
{
	u32 r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

static __always_inline u32 histogram_index(u64 value)
{
	if (value < (2ULL << HISTOGRAM_GROUPING_POWER))
		return (u32)value;
	u32 shift = highest_bit(value) - HISTOGRAM_GROUPING_POWER;
	return (shift << HISTOGRAM_GROUPING_POWER) + (u32)(value >> shift);
}

/* Adds one observation to histogram number `h` of a map holding consecutive
 * histograms of HISTOGRAM_BUCKETS u64 buckets. Shared across CPUs: atomic. */
static __always_inline void histogram_record(void *map, u32 h, u64 value)
{
	u32 key = h * HISTOGRAM_BUCKETS + histogram_index(value);
	u64 *bucket = bpf_map_lookup_elem(map, &key);
	if (bucket)
		__sync_fetch_and_add(bucket, 1);
}

/* Per-CPU counter banks: an mmap-able array whose value is one CPU's bank of
 * u64 counters, padded to whole cache lines so CPUs never share a line.
 * Only the owning CPU writes its bank, with programs that do not migrate. */
#define CACHE_LINE 64
#define DEFINE_BANK(name, n)                                                   \
	struct name {                                                          \
		u64 counters[n];                                               \
	} __attribute__((aligned(CACHE_LINE)))

/* An mmap-able array of banks, one per CPU: userspace sets max_entries to the
 * number of possible CPUs before load. */
#define BANK_MAP(name, bank_type)                                              \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_ARRAY);                              \
		__uint(map_flags, BPF_F_MMAPABLE);                             \
		__type(key, u32);                                              \
		__type(value, struct bank_type);                               \
		__uint(max_entries, 1);                                        \
	} name SEC(".maps")

/* An mmap-able array of `n` consecutive histograms. */
#define HISTOGRAM_MAP(name, n)                                                 \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_ARRAY);                              \
		__uint(map_flags, BPF_F_MMAPABLE);                             \
		__type(key, u32);                                              \
		__type(value, u64);                                            \
		__uint(max_entries, (n) * HISTOGRAM_BUCKETS);                  \
	} name SEC(".maps")

static __always_inline void *bank_of_this_cpu(void *map)
{
	u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(map, &cpu);
}

/* Named slots: a bounded, mmap-able table giving things met on a hot path
 * (file system types, disks) a small index without a hash map. Slot i holds
 * the thing's non-zero id, claimed first, then its name, and then `named`
 * is set; userspace reads `named` before the name (bpf::NamedSlots in
 * Rust). */
#define SLOT_NAME_LEN 32

struct named_slot {
	u64 id;
	u64 named;
	char name[SLOT_NAME_LEN];
};

/* Writes a claimed slot's name (a kernel string) and publishes it. */
static __always_inline void name_slot(void *map, u32 slot, const char *name)
{
	u32 key = slot;
	struct named_slot *s = bpf_map_lookup_elem(map, &key);
	if (!s)
		return;
	bpf_probe_read_kernel_str(s->name, sizeof(s->name), name);
	__sync_fetch_and_add(&s->named, 1); /* a full barrier: the name first */
}

#define NAMED_SLOTS(name, n)                                                   \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_ARRAY);                              \
		__uint(map_flags, BPF_F_MMAPABLE);                             \
		__type(key, u32);                                              \
		__type(value, struct named_slot);                              \
		__uint(max_entries, n);                                        \
	} name SEC(".maps")

/* The slot holding `id`, or the first free one, claimed with a
 * compare-and-swap (CPUs racing for one slot agree on the winner); `n` when
 * all n are taken. `*claimed` is set when this call took the slot: the
 * caller then writes the name. O(n) in the worst case; things are met in
 * the order of first use, so the busy ones sit early. */
static __always_inline u32 slot_of(void *map, u32 n, u64 id, bool *claimed)
{
	*claimed = false;
	for (u32 i = 0; i < n; i++) {
		u32 key = i;
		struct named_slot *s = bpf_map_lookup_elem(map, &key);
		if (!s)
			break;
		u64 seen = s->id;
		if (seen == id)
			return i;
		if (seen)
			continue;
		seen = __sync_val_compare_and_swap(&s->id, 0, id);
		if (seen == 0) {
			*claimed = true;
			return i;
		}
		if (seen == id)
			return i;
	}
	return n;
}

/* The entry of `key` in `map`, a preallocated hash map (compatibility
 * paths: per-task state where there is no local storage), added as `zero`
 * when absent; NULL when the map is full. The update may also fail because
 * another CPU just added the same key, hence the second lookup. */
static __always_inline void *entry_or_add(void *map, const void *key, const void *zero)
{
	void *entry = bpf_map_lookup_elem(map, key);
	if (entry)
		return entry;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* Whether the current task is in a 32-bit (compat) system call, whose
 * numbers are not the native ones. x86-64 marks it with TS_COMPAT in
 * thread_info.status; elsewhere this says no. */
#define TS_COMPAT 0x0002
static __always_inline bool compat_syscall(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (!bpf_core_field_exists(task->thread_info.status))
		return false;
	return task->thread_info.status & TS_COMPAT;
}

/* compat_syscall() for programs without BTF-typed helpers (compatibility
 * paths): the current task through bpf_get_current_task and CO-RE reads. */
static __always_inline bool compat_syscall_untyped(void)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	if (!bpf_core_field_exists(task->thread_info.status))
		return false;
	return BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
}

#endif
