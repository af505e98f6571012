# CPU busy % per interval, all CPUs together, with DuckDB.
# Column names hold quotes and braces: quote them with "..." and double
# the inner quotes. Counters are UInt64: cast before subtracting, so that
# a difference is never computed in unsigned arithmetic.
import sys
import duckdb

path = sys.argv[1]
busy = " + ".join(
    f'"cpu_usage{{state=""{s}""}}"::HUGEINT'
    for s in ["user", "nice", "system", "irq", "softirq", "steal"]
)
idle = '"cpu_usage{state=""idle""}"::HUGEINT + "cpu_usage{state=""iowait""}"::HUGEINT'
rows = duckdb.sql(f"""
    WITH t AS (
        SELECT timestamp, {busy} AS busy, {idle} AS idle
        FROM read_parquet('{path}')
    ), d AS (
        SELECT timestamp,
               busy - lag(busy) OVER (ORDER BY timestamp) AS db,
               idle - lag(idle) OVER (ORDER BY timestamp) AS di
        FROM t
    )
    SELECT timestamp, 100.0 * db / (db + di) AS busy_pct
    FROM d
    WHERE db >= 0 AND di >= 0 AND db + di > 0
    ORDER BY timestamp
""").fetchall()
for timestamp, busy_pct in rows:
    print(f"{timestamp},{busy_pct:.6f}")
