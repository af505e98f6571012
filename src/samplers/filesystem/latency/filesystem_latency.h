/* Shared by filesystem_latency.bpf.c and its loader (mod.rs), which checks
 * the loaded maps' sizes against its copies of these numbers at start. */
#ifndef FILESYSTEM_LATENCY_H
#define FILESYSTEM_LATENCY_H

/* ops, in the order of the counters and histograms of each type slot */
enum { FS_OP_READ = 0, FS_OP_WRITE = 1, FS_OP_OPEN = 2, FS_OP_FSYNC = 3, FS_OPS = 4 };

/* file system types counted on their own; the rest share the slot after */
#define FS_TYPES 32
#define FS_SLOTS (FS_TYPES + 1)

#endif
