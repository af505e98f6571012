# p99 of system call latency per interval, with polars.
# A histogram column holds cumulative bucket counts (a list per row): an
# interval's counts are the difference of two rows. Bucket i (from 0) of
# the layout with grouping_power 3 ends at i for i < 16, else at
# ((i % 8 + 9) << (i // 8 - 1)) - 1 (nanoseconds here).
import math
import sys
import polars as pl

path = sys.argv[1]
df = pl.read_parquet(path, columns=["timestamp", "syscall_latency:buckets"]).sort("timestamp")
edge = lambda i: i if i < 16 else ((i % 8 + 9) << (i // 8 - 1)) - 1
rows = df["syscall_latency:buckets"].to_list()
for k in range(1, len(rows)):
    if rows[k] is None or rows[k - 1] is None:
        continue
    counts = [b - a for a, b in zip(rows[k - 1], rows[k])]
    total = sum(counts)
    if total == 0 or min(counts) < 0:
        continue
    need, below = math.ceil(0.99 * total), 0
    for i, n in enumerate(counts):
        below += n
        if below >= need:
            print(f"{df['timestamp'][k]},{edge(i)}")
            break
