# CPU busy % per interval, all CPUs together, with polars.
import sys
import polars as pl

path = sys.argv[1]
col = lambda state: pl.col(f'cpu_usage{{state="{state}"}}').cast(pl.Int64)
busy = sum(col(s) for s in ["user", "nice", "system", "irq", "softirq", "steal"])
idle = col("idle") + col("iowait")
df = (
    pl.read_parquet(path)
    .sort("timestamp")
    .select("timestamp", busy.diff().alias("db"), idle.diff().alias("di"))
    .filter((pl.col("db") >= 0) & (pl.col("di") >= 0) & (pl.col("db") + pl.col("di") > 0))
    .with_columns((100.0 * pl.col("db") / (pl.col("db") + pl.col("di"))).alias("busy_pct"))
)
for timestamp, busy_pct in df.select("timestamp", "busy_pct").iter_rows():
    print(f"{timestamp},{busy_pct:.6f}")
