#!/usr/bin/env python3
"""PostgreSQL export and import (issue 5): 1M rows PostgreSQL -> Parquet and Parquet -> PostgreSQL
with FlowEngine, against psql's `\\copy ... TO/FROM` CSV, alternating in the same run, median of N
runs. Reports rows/s and the ratio FlowEngine / psql (higher is better for FlowEngine). Writes
benches/DATABASE_RESULTS.md.

Usage: python3 benches/databases.py [--rows 1000000] [--runs 3] [--binary target/release/flowengine]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
URL = "postgresql://postgres@127.0.0.1:5432/test"
SRC = "fe_bench_src"
DST = "fe_bench_dst"
COLUMNS = "id bigint, customer int, amount numeric(12,2), status text, created timestamp"


def psql(sql):
    r = subprocess.run(PG + ["-A", "-t", "-c", sql], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"psql failed: {sql}\n{r.stderr}")
    return r.stdout


def timed(cmd, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
                                             / "release" / "flowengine"))
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    n = args.rows
    psql(f"DROP TABLE IF EXISTS {SRC}; DROP TABLE IF EXISTS {DST}; CREATE TABLE {SRC} ({COLUMNS});"
         f"INSERT INTO {SRC} SELECT g, g % 5000, (g % 100000) / 100.0, "
         f"(ARRAY['new','paid','shipped','returned'])[1 + g % 4], "
         f"timestamp '2024-01-01' + g * interval '1 second' FROM generate_series(1, {n}) g;"
         f"CREATE TABLE {DST} ({COLUMNS});")
    psql(f"VACUUM ANALYZE {SRC}")
    times = {k: [] for k in ("fe_export", "psql_export", "fe_import", "psql_import")}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        parquet = work / "orders.parquet"
        csv = work / "orders.csv"
        env = dict(os.environ, FLOWENGINE_STATE_DIR=str(work / "state"))
        export_sql = work / "export.sql"
        export_sql.write_text(
            f"CREATE EXTERNAL TABLE src STORED AS POSTGRES LOCATION '{SRC}' OPTIONS ('connection' '{URL}');\n"
            f"COPY src TO '{parquet}';\n")
        import_sql = work / "import.sql"
        import_sql.write_text(
            f"CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{DST}' OPTIONS ('connection' '{URL}');\n"
            f"CREATE EXTERNAL TABLE orders STORED AS PARQUET LOCATION '{parquet}';\n"
            f"INSERT INTO dst SELECT * FROM orders;\n")
        for _ in range(args.runs):
            parquet.unlink(missing_ok=True)
            times["fe_export"].append(timed([args.binary, "run", str(export_sql), "-q"], env))
            csv.unlink(missing_ok=True)
            times["psql_export"].append(timed(PG + ["-c", f"\\copy {SRC} TO '{csv}' WITH (FORMAT csv)"]))
            psql(f"TRUNCATE {DST}")
            times["fe_import"].append(timed([args.binary, "run", str(import_sql), "-q"], env))
            got = psql(f"SELECT count(*) FROM {DST}").strip()
            if got != str(n):
                sys.exit(f"import wrote {got} rows, expected {n}")
            diff = psql(f"SELECT count(*) FROM (SELECT * FROM {SRC} EXCEPT SELECT * FROM {DST}) d").strip()
            if diff != "0":
                sys.exit(f"FlowEngine's import differs from the source in {diff} rows")
            psql(f"TRUNCATE {DST}")
            times["psql_import"].append(timed(PG + ["-c", f"\\copy {DST} FROM '{csv}' WITH (FORMAT csv)"]))
        same = psql(f"SELECT count(*) FROM (SELECT * FROM {SRC} EXCEPT SELECT * FROM {DST}) d").strip()
    psql(f"DROP TABLE IF EXISTS {SRC}; DROP TABLE IF EXISTS {DST}")
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: n / v for k, v in med.items()}
    export_ratio = rate["fe_export"] / rate["psql_export"]
    import_ratio = rate["fe_import"] / rate["psql_import"]
    lines = [
        f"# PostgreSQL export and import, {n:,} rows ({COLUMNS})\n",
        f"Median of {args.runs} alternating runs in one session, {Path(args.binary).parent.name} binary, 2 cores, "
        "PostgreSQL 15 on loopback. FlowEngine times are whole `flowengine run` processes (start, connect, "
        "schema inference included); psql times are whole `psql -c \\copy` processes.\n",
        "| direction | FlowEngine | psql \\copy CSV | FlowEngine rows/s | psql rows/s | ratio (bar) |",
        "|---|---|---|---|---|---|",
        f"| export PostgreSQL -> Parquet | {med['fe_export']:.2f}s | {med['psql_export']:.2f}s | "
        f"{rate['fe_export']:,.0f} | {rate['psql_export']:,.0f} | {export_ratio:.2f}x (>= 0.8x) |",
        f"| import Parquet -> PostgreSQL | {med['fe_import']:.2f}s | {med['psql_import']:.2f}s | "
        f"{rate['fe_import']:,.0f} | {rate['psql_import']:,.0f} | {import_ratio:.2f}x (>= 0.5x) |",
        "",
        f"Rows differing from the source: 0 after every FlowEngine import (checked with EXCEPT), {same} after psql's. "
        "Each FlowEngine import reads the Parquet file FlowEngine exported, so the check covers the export too. "
        "Export reads with `COPY (query) TO STDOUT (FORMAT binary)`, decoded into Arrow on its own task "
        "(`connectors/src/database/pg_binary.rs`); import writes through FlowEngine's COPY FROM STDIN sink "
        "(`connectors/src/database/pg_copy.rs`).",
        "",
        "All runs (s): " + ", ".join(f"{k}: {', '.join(f'{x:.2f}' for x in v)}" for k, v in times.items()),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_report:
        (HERE / "DATABASE_RESULTS.md").write_text(report)


if __name__ == "__main__":
    main()
