// SPDX-License-Identifier: GPL-2.0
/* filesystem_latency: read, write, open and fsync latency per file system
 * type, with two ways in (userspace loads one of them):
 *
 * - fentry/fexit on file systems' own file operations (ext4_file_read_iter,
 *   xfs_file_fsync, ...): the time inside the file system, whatever called
 *   it (read(2), io_uring, the kernel). Each pair of programs is given its
 *   target by userspace before load (TARGET slots below).
 * - tp_btf/sys_enter and sys_exit for read/write/pread64/pwrite64/readv/
 *   writev/preadv/pwritev/preadv2/pwritev2, open/openat/openat2/creat,
 *   fsync/fdatasync: the time of the whole system call, on regular files
 *   and directories only. The syscall number is checked against a
 *   read-only table before anything else, so other syscalls cost one
 *   array load. IO submitted through io_uring or AIO is not seen.
 *
 * Either way a call that fails is not counted, and the file system type is
 * taken from the file: file->f_inode->i_sb->s_type. Types get a slot in
 * `fs_types` on first use, claimed with a compare-and-swap (no hash map):
 * FS_TYPES slots, then one overflow slot for the rest. */
#include "rezolus.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "filesystem_latency.h"

#define MAX_SYSCALL_NR 1024

/* op + 1 per syscall number (0: not a file system op); set before load */
const volatile u8 syscall_op[MAX_SYSCALL_NR] = {};

DEFINE_BANK(fs_bank, FS_SLOTS *FS_OPS);
BANK_MAP(counters, fs_bank);
HISTOGRAM_MAP(latency, FS_SLOTS *FS_OPS);

NAMED_SLOTS(fs_types, FS_TYPES);

/* per task: the start of each op in flight (ops nest: a synchronous write
 * fsyncs inside the write), and for the syscall path the fd */
struct fs_start {
	u64 ts[FS_OPS];
	s64 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fs_start);
} starts SEC(".maps");

#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFDIR 0040000

/* The slot of a file system type (its struct file_system_type's address is
 * the id; its name is as in /proc/filesystems). */
static __always_inline u32 type_slot(struct file_system_type *type)
{
	bool claimed;
	u32 slot = slot_of(&fs_types, FS_TYPES, (u64)type, &claimed);
	if (claimed)
		name_slot(&fs_types, slot, BPF_CORE_READ(type, name));
	return slot;
}

static __always_inline void record(struct file *file, u32 op, u64 start, bool any_mode)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return;
	if (!any_mode) {
		u32 mode = BPF_CORE_READ(inode, i_mode) & S_IFMT;
		if (mode != S_IFREG && mode != S_IFDIR)
			return;
	}
	struct file_system_type *type = BPF_CORE_READ(inode, i_sb, s_type);
	if (!type)
		return;
	u32 index = type_slot(type) * FS_OPS + op;
	if (index >= FS_SLOTS * FS_OPS)
		return;
	struct fs_bank *bank = bank_of_this_cpu(&counters);
	if (bank)
		bank->counters[index] += 1;
	histogram_record(&latency, index, bpf_ktime_get_ns() - start);
}

/* ---- the syscall path ---- */

static __always_inline long syscall_nr(struct pt_regs *regs)
{
	if (bpf_core_field_exists(regs->orig_ax))
		return BPF_CORE_READ(regs, orig_ax);
	return BPF_CORE_READ(regs, syscallno);
}

static __always_inline s64 first_argument(struct pt_regs *regs)
{
	if (bpf_core_field_exists(regs->di))
		return (int)BPF_CORE_READ(regs, di);
	return (int)BPF_CORE_READ(regs, orig_x0);
}

static __always_inline u32 op_of(long id)
{
	if (id < 0 || id >= MAX_SYSCALL_NR)
		return 0;
	return syscall_op[id];
}

SEC("tp_btf/sys_enter")
int BPF_PROG(fs_sys_enter, struct pt_regs *regs, long id)
{
	u32 op = op_of(id);
	if (!op || op > FS_OPS)
		return 0;
	struct fs_start *s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return 0;
	/* the fd is the first argument of every call here but the opens */
	s->fd = op == FS_OP_OPEN + 1 ? -1 : first_argument(regs);
	s->ts[(op - 1) & (FS_OPS - 1)] = bpf_ktime_get_ns();
	return 0;
}

static __always_inline struct file *file_of_fd(s64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(fs_sys_exit, struct pt_regs *regs, long ret)
{
	u32 op = op_of(syscall_nr(regs));
	if (!op || op > FS_OPS)
		return 0;
	op = (op - 1) & (FS_OPS - 1);
	struct fs_start *s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, 0);
	if (!s)
		return 0;
	u64 start = s->ts[op];
	s->ts[op] = 0;
	if (!start || ret < 0)
		return 0;
	struct file *file = file_of_fd(op == FS_OP_OPEN ? ret : s->fd);
	if (file)
		record(file, op, start, false);
	return 0;
}

/* ---- the fentry path ---- */

static __always_inline void enter(u32 op)
{
	struct fs_start *s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s)
		s->ts[op & (FS_OPS - 1)] = bpf_ktime_get_ns();
}

static __always_inline void leave(u32 op, struct file *file, long ret)
{
	struct fs_start *s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, 0);
	if (!s)
		return;
	op &= FS_OPS - 1;
	u64 start = s->ts[op];
	s->ts[op] = 0;
	if (start && ret >= 0 && file)
		record(file, op, start, true);
}

/* one fentry/fexit pair per op for target slot N */
#define TARGET(N)                                                              \
	SEC("fentry")                                                          \
	int BPF_PROG(read_enter_##N) { enter(FS_OP_READ); return 0; }          \
	SEC("fexit")                                                           \
	int BPF_PROG(read_exit_##N, struct kiocb *iocb, void *iter, long ret)  \
	{ leave(FS_OP_READ, BPF_CORE_READ(iocb, ki_filp), ret); return 0; }    \
	SEC("fentry")                                                          \
	int BPF_PROG(write_enter_##N) { enter(FS_OP_WRITE); return 0; }        \
	SEC("fexit")                                                           \
	int BPF_PROG(write_exit_##N, struct kiocb *iocb, void *iter, long ret) \
	{ leave(FS_OP_WRITE, BPF_CORE_READ(iocb, ki_filp), ret); return 0; }   \
	SEC("fentry")                                                          \
	int BPF_PROG(open_enter_##N) { enter(FS_OP_OPEN); return 0; }          \
	SEC("fexit")                                                           \
	int BPF_PROG(open_exit_##N, struct inode *inode, struct file *file,    \
		     int ret)                                                  \
	{ leave(FS_OP_OPEN, file, ret); return 0; }                            \
	SEC("fentry")                                                          \
	int BPF_PROG(fsync_enter_##N) { enter(FS_OP_FSYNC); return 0; }        \
	SEC("fexit")                                                           \
	int BPF_PROG(fsync_exit_##N, struct file *file, loff_t start,          \
		     loff_t end, int datasync, int ret)                        \
	{ leave(FS_OP_FSYNC, file, ret); return 0; }

TARGET(0)
TARGET(1)
TARGET(2)
TARGET(3)
TARGET(4)
TARGET(5)

char LICENSE[] SEC("license") = "GPL";
