/* Kernel types for CO-RE, checked in rather than generated from the build
 * host. Only the fields our programs read are declared; with
 * preserve_access_index, libbpf relocates each access against the running
 * kernel's BTF by name, so field order and struct size here do not matter
 * and the header is the same for every architecture. */
#ifndef REZOLUS_VMLINUX_H
#define REZOLUS_VMLINUX_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef _Bool bool;
enum { false = 0, true = 1 };

/* uapi constants (stable ABI) */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_QUEUE = 22,
	BPF_MAP_TYPE_SK_STORAGE = 24,
	BPF_MAP_TYPE_CGRP_STORAGE = 32,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};
enum {
	BPF_F_NO_PREALLOC = (1U << 0),
	BPF_F_MMAPABLE = (1U << 10),
};
enum {
	BPF_LOCAL_STORAGE_GET_F_CREATE = (1ULL << 0),
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

struct thread_info {
	unsigned int cpu;
	__u32 status; /* x86: TS_COMPAT while a 32-bit system call runs */
} __attribute__((preserve_access_index));

/* `cpu` is in thread_info on some configurations, in task_struct on others:
 * programs test which exists with bpf_core_field_exists. */
struct kernfs_node {
	__u64 id; /* the cgroup id: its directory's inode number */
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp; /* the task's cgroup in the v2 hierarchy */
} __attribute__((preserve_access_index));

struct task_struct {
	struct thread_info thread_info;
	struct css_set *cgroups;
	unsigned int __state;
	int pid;
	int tgid;
	unsigned int cpu;
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* A system call's number and first argument as saved at entry: orig_ax and
 * di on x86-64, syscallno and orig_x0 on arm64 (programs test which exists
 * with bpf_core_field_exists). */
struct pt_regs {
	unsigned long orig_ax;
	unsigned long di;
	int syscallno;
	unsigned long orig_x0;
} __attribute__((preserve_access_index));

/* files and file systems */
struct file_system_type {
	const char *name;
} __attribute__((preserve_access_index));

struct super_block {
	struct file_system_type *s_type;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct kiocb {
	struct file *ki_filp;
} __attribute__((preserve_access_index));

typedef long long loff_t;

struct device {
	struct device *parent;
} __attribute__((preserve_access_index));

struct block_device {
	struct device bd_device;
} __attribute__((preserve_access_index));

struct gendisk {
	struct block_device *part0;
	int major;
	int first_minor;
	char disk_name[32];
} __attribute__((preserve_access_index));

struct request_queue {
	struct gendisk *disk;
} __attribute__((preserve_access_index));

struct request {
	struct request_queue *q;
	unsigned int cmd_flags;
	unsigned int __data_len;
} __attribute__((preserve_access_index));

/* networking */
struct sk_buff {
	unsigned int len;
	__u16 protocol; /* big endian: an ETH_P_* value */
	__u16 transport_header;
	__u16 network_header;
	unsigned char *head;
	unsigned char *data;
	char cb[48];
} __attribute__((preserve_access_index));

/* TCP's private part of sk_buff.cb (include/net/tcp.h); tcp_gso_segs sits in
 * an anonymous union there, which CO-RE field matching looks through. */
struct tcp_skb_cb {
	__u16 tcp_gso_segs;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us; /* smoothed RTT << 3, in microseconds */
	__u32 mdev_us; /* mean deviation << 2, in microseconds */
} __attribute__((preserve_access_index));

struct request_sock;
struct net_device;

enum {
	ETH_P_IP = 0x0800,
	ETH_P_IPV6 = 0x86DD,
	IPPROTO_TCP = 6,
};

/* include/net/tcp_states.h */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
};

#endif
