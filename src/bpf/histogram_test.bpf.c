// SPDX-License-Identifier: GPL-2.0
/* Test-only program: computes histogram bucket indices with the BPF-compiled
 * helper, so a test can compare them with the Rust side. Run with
 * BPF_PROG_TEST_RUN; the context is read and written back (the loop is
 * unrolled: the verifier wants constant context offsets). */
#include "rezolus.h"

#define N 64

struct histogram_test_args {
	u64 values[N];
	u32 indices[N];
};

SEC("syscall")
int histogram_indices(struct histogram_test_args *args)
{
#pragma unroll
	for (int i = 0; i < N; i++)
		args->indices[i] = histogram_index(args->values[i]);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
