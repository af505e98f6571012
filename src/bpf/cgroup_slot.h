/* Per-cgroup counters for samplers that attribute events to the cgroup (v2)
 * of a task: a small slot per cgroup, kept in cgroup-local storage
 * (BPF_MAP_TYPE_CGRP_STORAGE, no hash map), handed out from a queue of free
 * slots that userspace fills at start and refills as cgroups die. A cgroup
 * that finds no free slot counts under slot CGROUP_OTHER for as long as it
 * lives. slot_owner[slot] holds the owning cgroup's id (its directory's
 * inode number), the time it was assigned and the time the cgroup was
 * removed (cgroup_rmdir), so userspace can name slots and free those whose
 * cgroup is gone, never one assigned after its walk of the hierarchy began. The counters are CGROUP_COUNTERS u64 per slot in one
 * mmap-able array shared by all CPUs (added to atomically: per-CPU copies
 * of 4097 slots would cost megabytes per CPU).
 *
 * All of it is behind the read-only flag count_cgroups: with it false, the
 * verifier drops the code and the sampler costs what it did without it.
 *
 * Include after rezolus.h; define CGROUP_COUNTERS first. The Rust side is
 * src/cgroups/slots.rs. */
#ifndef CGROUP_SLOT_H
#define CGROUP_SLOT_H

#define CGROUP_SLOTS 4096
#define CGROUP_OTHER CGROUP_SLOTS

/* set by userspace before load */
const volatile bool count_cgroups = false;

struct cgroup_slot_owner {
	u64 id;
	u64 assigned_ns;
	u64 removed_ns; /* 0 while the cgroup lives */
};

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u64); /* slot + 1; 0 while unassigned (64 bits: BPF's
			      * compare-and-swap before cpu v3) */
} cgroup_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, CGROUP_SLOTS);
	__type(value, u32);
} free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, u32);
	__type(value, struct cgroup_slot_owner);
	__uint(max_entries, CGROUP_SLOTS);
} slot_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, (CGROUP_SLOTS + 1) * CGROUP_COUNTERS);
} cgroup_counts SEC(".maps");

/* Where a cgroup's slot was last found: the cgroup's address and id (the id
 * guards against a new cgroup allocated where a freed one was). */
struct cgroup_slot_cache {
	u64 cgroup;
	u64 id;
	u64 slot;
};

/* Per CPU, the last cgroup seen: most events on a CPU come from the same
 * cgroup as the one before, and then cost two compares instead of a storage
 * lookup. */
struct cpu_slot_cache {
	struct cgroup_slot_cache c;
} __attribute__((aligned(CACHE_LINE)));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct cpu_slot_cache);
	__uint(max_entries, 1); /* userspace sets it to the possible CPUs */
} slot_cache SEC(".maps");

/* The slot of a cgroup from its storage, assigning one at first sight. */
static __always_inline u32 storage_slot(struct cgroup *cgrp)
{
	u64 *stored = bpf_cgrp_storage_get(&cgroup_slot, cgrp, 0, 0);
	if (stored && *stored)
		return *stored - 1;
	stored = bpf_cgrp_storage_get(&cgroup_slot, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!stored)
		return CGROUP_OTHER;
	u32 slot;
	if (bpf_map_pop_elem(&free_slots, &slot) || slot >= CGROUP_SLOTS)
		slot = CGROUP_OTHER;
	u64 was = __sync_val_compare_and_swap(stored, 0, (u64)slot + 1);
	if (was) {
		/* another CPU assigned one first: give ours back */
		if (slot != CGROUP_OTHER)
			bpf_map_push_elem(&free_slots, &slot, 0);
		return was - 1;
	}
	if (slot != CGROUP_OTHER) {
		struct cgroup_slot_owner *owner = bpf_map_lookup_elem(&slot_owner, &slot);
		if (owner) {
			owner->id = cgrp->kn->id;
			owner->assigned_ns = bpf_ktime_get_ns();
			owner->removed_ns = 0;
		}
	}
	return slot;
}

/* The slot of a task's cgroup, through a cache entry (per CPU, or in the
 * task's own storage). */
static __always_inline u32 cached_cgroup_slot(struct task_struct *task,
					      struct cgroup_slot_cache *cache)
{
	struct cgroup *cgrp = task->cgroups->dfl_cgrp;
	u64 id = cgrp->kn->id;
	if (cache && cache->cgroup == (u64)cgrp && cache->id == id)
		return cache->slot;
	u32 slot = storage_slot(cgrp);
	if (cache) {
		cache->cgroup = (u64)cgrp;
		cache->id = id;
		cache->slot = slot;
	}
	return slot;
}

/* The slot of the current task's cgroup, CGROUP_OTHER when none is free. */
static __always_inline u32 current_cgroup_slot(void)
{
	struct cpu_slot_cache *cache = bank_of_this_cpu(&slot_cache);
	return cached_cgroup_slot(bpf_get_current_task_btf(), cache ? &cache->c : 0);
}

/* Adds `value` to counter `counter` of `slot`. */
static __always_inline void cgroup_add(u32 slot, u32 counter, u64 value)
{
	u32 key = slot * CGROUP_COUNTERS + counter;
	u64 *count = bpf_map_lookup_elem(&cgroup_counts, &key);
	if (count)
		__sync_fetch_and_add(count, value);
}

/* A removed cgroup's slot is marked at once, so its series leave the
 * snapshot at the next one rather than at the next walk. Rare: rmdir. */
SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cgroup_rmdir_slot, struct cgroup *cgrp, const char *path)
{
	if (!count_cgroups)
		return 0;
	u64 *stored = bpf_cgrp_storage_get(&cgroup_slot, cgrp, 0, 0);
	if (!stored || !*stored)
		return 0;
	u32 slot = *stored - 1;
	struct cgroup_slot_owner *owner = bpf_map_lookup_elem(&slot_owner, &slot);
	if (owner && owner->id == cgrp->kn->id)
		owner->removed_ns = bpf_ktime_get_ns();
	return 0;
}

#endif
