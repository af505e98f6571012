// SPDX-License-Identifier: GPL-2.0
/* Benchmark-only programs (examples/floor_probe.rs, for scripts/overhead):
 * empty programs on the tracepoints the syscall and scheduler samplers use,
 * attached the same way (tp_btf). Whatever they cost the workload is the
 * floor any sampler on those hooks pays here: the tracepoint, the BPF
 * trampoline and the program call, with no work in the program. */
#include "rezolus.h"

SEC("tp_btf/sys_enter")
int floor_sys_enter(void *ctx)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int floor_sys_exit(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_wakeup")
int floor_sched_wakeup(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int floor_sched_wakeup_new(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int floor_sched_switch(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
