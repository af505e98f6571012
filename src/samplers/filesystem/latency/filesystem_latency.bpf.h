/* filesystem_latency's maps and its system call path, shared by its own
 * programs (filesystem_latency.bpf.c) and the syscall sampler's
 * (syscall.bpf.c): when both samplers run and fentry is refused, the
 * syscall sampler's sys_enter/sys_exit programs do this work too, because a
 * second program on those tracepoints costs every system call a second
 * dispatch (on this kernel more: with two probes the tracepoint calls each
 * through a retpoline). The loader (mod.rs) checks the maps' sizes against
 * its copies of the numbers here.
 *
 * The system call path times read/pread64/readv/preadv/preadv2 (op read),
 * the same for write, open/openat/openat2/creat (open) and fsync/fdatasync
 * (fsync) on regular files and directories, from sys_enter to sys_exit.
 * Other system calls are turned away by one table lookup, and so are 32-bit
 * compat calls (their numbers are not these). The file system
 * type is the file's: file->f_inode->i_sb->s_type, given a slot on first
 * use (NAMED_SLOTS, no hash map). Calls that fail are not counted. */
#ifndef FILESYSTEM_LATENCY_BPF_H
#define FILESYSTEM_LATENCY_BPF_H

#include "rezolus.h"
#include <bpf/bpf_core_read.h>

/* ops, in the order of the counters and histograms of each type slot */
enum { FS_OP_READ = 0, FS_OP_WRITE = 1, FS_OP_OPEN = 2, FS_OP_FSYNC = 3, FS_OPS = 4 };

/* file system types counted on their own; the rest share the slot after
 * (each slot's histograms take 15.5 KiB of kernel memory, mapped into the
 * agent) */
#define FS_TYPES 16
#define FS_SLOTS (FS_TYPES + 1)
#define FS_MAX_SYSCALL_NR 1024

/* op + 1 per system call number (0: not a file system op); set before load */
const volatile u8 fs_syscall_op[FS_MAX_SYSCALL_NR] = {};

DEFINE_BANK(fs_bank, FS_SLOTS *FS_OPS);
BANK_MAP(fs_counters, fs_bank);
HISTOGRAM_MAP(fs_latency, FS_SLOTS *FS_OPS);
NAMED_SLOTS(fs_types, FS_TYPES);

/* per task: the start of each op in flight (ops nest: a synchronous write
 * fsyncs inside the write), and for the system call path the fd */
struct fs_start {
	u64 ts[FS_OPS];
	s64 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fs_start);
} fs_starts SEC(".maps");

#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFDIR 0040000

/* The slot of a file system type (its struct file_system_type's address is
 * the id; its name is as in /proc/filesystems). */
static __always_inline u32 fs_type_slot(struct file_system_type *type)
{
	bool claimed;
	u32 slot = slot_of(&fs_types, FS_TYPES, (u64)type, &claimed);
	if (claimed)
		name_slot(&fs_types, slot, BPF_CORE_READ(type, name));
	return slot;
}

/* Counts and times op `op` on `file` (a BTF pointer), begun at `start`;
 * with `files_only`, only on regular files and directories. */
static __always_inline void fs_record(struct file *file, u32 op, u64 start, bool files_only)
{
	struct inode *inode = file->f_inode;
	if (!inode)
		return;
	if (files_only) {
		u32 mode = inode->i_mode & S_IFMT;
		if (mode != S_IFREG && mode != S_IFDIR)
			return;
	}
	struct super_block *sb = inode->i_sb;
	if (!sb || !sb->s_type)
		return;
	u32 index = fs_type_slot(sb->s_type) * FS_OPS + op;
	if (index >= FS_SLOTS * FS_OPS)
		return;
	struct fs_bank *bank = bank_of_this_cpu(&fs_counters);
	if (bank)
		bank->counters[index] += 1;
	histogram_record(&fs_latency, index, bpf_ktime_get_ns() - start);
}

/* The op of native system call `id` (0: none); 32-bit compat calls, whose
 * numbers mean other calls, are none. */
static __always_inline u32 fs_op_of(long id)
{
	if (id < 0 || id >= FS_MAX_SYSCALL_NR)
		return 0;
	u32 op = fs_syscall_op[id];
	if (op && compat_syscall())
		return 0;
	return op;
}

/* At sys_enter of call `id`: for a file system op, the start time and fd. */
static __always_inline void fs_syscall_enter(struct pt_regs *regs, long id)
{
	u32 op = fs_op_of(id);
	if (!op || op > FS_OPS)
		return;
	struct fs_start *s = bpf_task_storage_get(&fs_starts, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return;
	op -= 1;
	/* the fd is the first argument of every call here but the opens */
	if (op != FS_OP_OPEN)
		s->fd = (int)(bpf_core_field_exists(regs->di) ? regs->di : regs->orig_x0);
	s->ts[op & (FS_OPS - 1)] = bpf_ktime_get_ns();
}

/* The current task's open file `fd`, as an untrusted BTF pointer. */
static __always_inline struct file *fs_file_of_fd(s64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return NULL;
	struct fdtable *fdt = files->fdt;
	if (!fdt || fd < 0 || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	return bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
}

/* At sys_exit returning `ret`: records a file system op begun at sys_enter. */
static __always_inline void fs_syscall_exit(struct pt_regs *regs, long ret)
{
	long id = bpf_core_field_exists(regs->orig_ax) ? (long)regs->orig_ax : regs->syscallno;
	u32 op = fs_op_of(id);
	if (!op || op > FS_OPS)
		return;
	op = (op - 1) & (FS_OPS - 1);
	struct fs_start *s = bpf_task_storage_get(&fs_starts, bpf_get_current_task_btf(), 0, 0);
	if (!s)
		return;
	u64 start = s->ts[op];
	s->ts[op] = 0;
	if (!start || ret < 0)
		return;
	struct file *file = fs_file_of_fd(op == FS_OP_OPEN ? ret : s->fd);
	if (file)
		fs_record(file, op, start, true);
}

/* ---- The compatibility path's system call timing (kernels without task
 * storage, BTF-typed helpers or BTF of their own): every kernel structure
 * read through CO-RE. The start times live in a hash map of threads: this
 * sampler's own (filesystem_latency.bpf.c), or, when the syscall sampler's
 * compatibility programs do this work, that sampler's map of threads,
 * whose entries have room for a file system call too. */

/* calls not timed because their thread found the hash map full */
DEFINE_BANK(fs_untracked_bank, 1);
BANK_MAP(fs_untracked_compat, fs_untracked_bank);

static __always_inline void fs_count_untracked(void)
{
	struct fs_untracked_bank *bank = bank_of_this_cpu(&fs_untracked_compat);
	if (bank)
		bank->counters[0] += 1;
}

/* fs_op_of() for programs without BTF-typed helpers */
static __always_inline u32 fs_op_of_untyped(long id)
{
	if (id < 0 || id >= FS_MAX_SYSCALL_NR)
		return 0;
	u32 op = fs_syscall_op[id];
	if (op && compat_syscall_untyped())
		return 0;
	return op;
}

/* At sys_enter of a file system call: the fd it works on, its first
 * argument (not meaningful for the opens, whose fd is what they return). */
static __always_inline s64 fs_fd_untyped(struct pt_regs *regs)
{
	return (int)(bpf_core_field_exists(regs->di) ? BPF_CORE_READ(regs, di)
						     : BPF_CORE_READ(regs, orig_x0));
}

/* At sys_exit: counts and times op `op` on the current task's file `fd`
 * (regular files and directories only), begun at `start`. */
static __always_inline void fs_record_untyped(u32 op, s64 fd, u64 start)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return;
	u32 mode = BPF_CORE_READ(inode, i_mode) & S_IFMT;
	if (mode != S_IFREG && mode != S_IFDIR)
		return;
	struct file_system_type *type = BPF_CORE_READ(inode, i_sb, s_type);
	if (!type)
		return;
	u32 index = fs_type_slot(type) * FS_OPS + (op & (FS_OPS - 1));
	if (index >= FS_SLOTS * FS_OPS)
		return;
	struct fs_bank *bank = bank_of_this_cpu(&fs_counters);
	if (bank)
		bank->counters[index] += 1;
	histogram_record(&fs_latency, index, bpf_ktime_get_ns() - start);
}

#endif
