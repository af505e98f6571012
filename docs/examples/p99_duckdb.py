# p99 of system call latency per interval, with DuckDB.
# A histogram column holds cumulative bucket counts (a list per row): an
# interval's counts are the difference of two rows. Bucket i (from 0) of
# the layout with grouping_power 3 ends at i for i < 16, else at
# ((i % 8 + 9) << (i // 8 - 1)) - 1 (nanoseconds here).
import sys
import duckdb

path = sys.argv[1]
rows = duckdb.sql(f"""
    WITH t AS (
        SELECT timestamp, "syscall_latency:buckets" AS b,
               lag("syscall_latency:buckets") OVER (ORDER BY timestamp) AS prev
        FROM read_parquet('{path}')
    ), d AS (
        SELECT timestamp,
               list_transform(list_zip(b, prev), lambda x: x[1]::HUGEINT - x[2]::HUGEINT) AS counts
        FROM t WHERE prev IS NOT NULL AND b IS NOT NULL AND len(b) = len(prev)
    ), u AS (
        -- a count that went back (an agent restart) leaves no interval
        SELECT timestamp, unnest(counts) AS n, generate_subscripts(counts, 1) - 1 AS i
        FROM d WHERE list_min(counts) >= 0
    ), c AS (
        SELECT timestamp, i,
               sum(n) OVER (PARTITION BY timestamp ORDER BY i) AS below,
               sum(n) OVER (PARTITION BY timestamp) AS total
        FROM u
    ), first AS (
        SELECT timestamp, min(i) AS i
        FROM c
        WHERE total > 0 AND below >= ceil(0.99 * total)
        GROUP BY timestamp
    )
    SELECT timestamp,
           CASE WHEN i < 16 THEN i ELSE ((i % 8 + 9)::HUGEINT << (i // 8 - 1)) - 1 END AS p99
    FROM first
    ORDER BY timestamp
""").fetchall()
for timestamp, p99 in rows:
    print(f"{timestamp},{p99}")
