#!/usr/bin/env python3
"""Tolerant CSV reader benchmark (issue 6): rows/s of `on_error 'skip'` and `'dead_letter'` on
TPC-H lineitem with 0.1% bad rows, against the strict reader on the clean file, in one run.

1. Generates lineitem.csv with tpchgen-cli (via run.py) if missing, and a dirty copy where every
   1000th data line is broken in one of five ways (ragged, unparsable number, impossible date,
   invalid UTF-8, unbalanced quote).
2. Runs one query touching every column (so every field is parsed) with the release binary:
   strict (DataFusion's reader) on the clean file, `on_error 'fail'` (FlowEngine's reader) on
   the clean file, `skip` and `dead_letter` on the dirty file; DuckDB's `ignore_errors` on the
   dirty file for reference.
3. Checks good + bad = input for the tolerant runs, reports median times and ratios, and writes
   benches/TOLERANT_RESULTS.md.

Usage: python3 benches/tolerant.py [--sf 1] [--runs 3] [--binary target/release/flowengine]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

EVERY = 1000
KINDS = ["ragged", "number", "date", "utf8", "quote"]


def corrupt(line: bytes, k: int) -> bytes:
    fields = line.rstrip(b"\n").split(b",")
    kind = KINDS[k % len(KINDS)]
    if kind == "ragged":
        fields = fields[:-1]
    elif kind == "number":
        fields[4] = b"12x"
    elif kind == "date":
        fields[10] = b"1996-13-45"
    elif kind == "utf8":
        fields[15] = fields[15] + b"\xff\xfe"
    else:
        # A quote opening an unquoted field and never closed (l_shipinstruct is never quoted).
        fields[13] = b'"' + fields[13]
    return b",".join(fields) + b"\n"


def make_dirty(clean: Path, dirty: Path):
    marker = dirty.with_suffix(".count")
    if dirty.exists() and marker.exists() and marker.stat().st_mtime > Path(__file__).stat().st_mtime:
        with open(dirty.with_suffix(".count")) as f:
            return json.load(f)
    bench.log(f"writing {dirty} (every {EVERY}th row broken) ...")
    dirty.parent.mkdir(parents=True, exist_ok=True)
    rows = bad = 0
    with open(clean, "rb") as src, open(dirty, "wb") as out:
        out.write(src.readline())
        for line in src:
            rows += 1
            if rows % EVERY == 0:
                out.write(corrupt(line, bad))
                bad += 1
            else:
                out.write(line)
    counts = {"rows": rows, "bad": bad}
    with open(dirty.with_suffix(".count"), "w") as f:
        json.dump(counts, f)
    return counts


def every_column_query():
    aggs = ", ".join(f"max({c})" for c, _ in bench.LINEITEM_COLUMNS)
    return f"SELECT count(*) AS n, {aggs} FROM lineitem"


def pipeline(path: Path, options: str) -> str:
    cols = ", ".join(f"{c} {t}" for c, t in bench.LINEITEM_COLUMNS)
    return (f"CREATE EXTERNAL TABLE lineitem ({cols}) STORED AS CSV LOCATION '{path}' "
            f"OPTIONS ('format.has_header' 'true'{options});\n{every_column_query()};\n")


def run_flowengine(binary, text, workdir):
    p = Path(workdir) / "p.sql"
    p.write_text(text)
    t0 = time.perf_counter()
    r = subprocess.run([binary, "run", str(p), "--format", "csv"], text=True, capture_output=True,
                       cwd=workdir)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"flowengine failed: {r.stderr[-2000:]}")
    n = int(r.stdout.splitlines()[1].split(",")[0])
    return secs, n, r.stderr


def run_duckdb(path, ignore_errors):
    import duckdb
    cols = ", ".join(f"'{c}': '{t}'" for c, t in bench.LINEITEM_COLUMNS)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    opts = ", ignore_errors=true" if ignore_errors else ""
    con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_csv('{path}', header=true, "
                f"columns={{{cols}}}{opts})")
    t0 = time.perf_counter()
    n = con.execute(every_column_query()).fetchone()[0]
    return time.perf_counter() - t0, n


def median_run(fn, runs):
    results = [fn() for _ in range(runs)]
    secs = statistics.median(r[0] for r in results)
    return secs, results[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=str(Path(os.environ.get("CARGO_TARGET_DIR", bench.REPO / "target"))
                                             / "release" / "flowengine"))
    ap.add_argument("--data-dir", default="/var/tmp/flowengine-bench")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()

    base = bench.generate(Path(args.data_dir), args.sf)
    clean = base / "csv" / "lineitem.csv"
    dirty = base / "csv_dirty" / "lineitem.csv"
    dirty.parent.mkdir(parents=True, exist_ok=True)
    counts = make_dirty(clean, dirty)
    total, bad = counts["rows"], counts["bad"]
    size = clean.stat().st_size

    results = {}
    with tempfile.TemporaryDirectory() as work:
        def fe(path, options):
            return lambda: run_flowengine(args.binary, pipeline(path, options), work)

        modes = [
            ("strict (DataFusion reader), clean", fe(clean, ""), total),
            ("on_error fail (FlowEngine reader), clean", fe(clean, ", 'on_error' 'fail'"), total),
            ("on_error skip, 0.1% bad", fe(dirty, ", 'on_error' 'skip'"), total - bad),
        ]
        for name, fn, expect in modes:
            secs, (_, n, _) = median_run(fn, args.runs)
            if n != expect:
                sys.exit(f"{name}: {n} rows, expected {expect}")
            results[name] = (secs, n)
            bench.log(f"{name}: {secs:.2f}s, {n / secs:,.0f} rows/s")

        # Dead letters: a fresh file per run; good + dead letters must equal the input.
        def dead_letter():
            dl = Path(work) / "dl.jsonl"
            dl.unlink(missing_ok=True)
            out = run_flowengine(args.binary, pipeline(
                dirty, f", 'on_error' 'dead_letter', 'dead_letter_path' '{dl}'"), work)
            with open(dl) as f:
                letters = [json.loads(x) for x in f]
            return out + (letters,)
        name = "on_error dead_letter, 0.1% bad"
        secs, (_, n, _, letters) = median_run(dead_letter, args.runs)
        if n + len(letters) != total or len(letters) != bad:
            sys.exit(f"{name}: {n} good + {len(letters)} dead letters != {total} input rows ({bad} bad)")
        reasons = sorted({l["reason"].split(":")[0] for l in letters})
        results[name] = (secs, n)
        bench.log(f"{name}: {secs:.2f}s, {n / secs:,.0f} rows/s; {len(letters)} dead letters")

        for name, path, ignore, expect in [
            ("DuckDB strict, clean", clean, False, total),
            ("DuckDB ignore_errors, 0.1% bad", dirty, True, None),
        ]:
            secs, (_, n) = median_run(lambda: run_duckdb(path, ignore), args.runs)
            if expect is not None and n != expect:
                sys.exit(f"{name}: {n} rows, expected {expect}")
            results[name] = (secs, n)
            bench.log(f"{name}: {secs:.2f}s, {n / secs:,.0f} rows/s")

    strict = results["strict (DataFusion reader), clean"]
    strict_rate = strict[1] / strict[0]
    lines = [
        f"# Tolerant CSV reader: lineitem SF{args.sf:g} ({size / 1e6:,.0f} MB, {total:,} rows), "
        f"{bad:,} bad rows (every {EVERY}th: {', '.join(KINDS)})\n",
        "One query reading every column (`count(*)` and `max` of each), "
        f"{Path(args.binary).parent.name} binary, "
        f"median of {args.runs} runs, 2 cores. Ratio = rows/s over the strict reader's rows/s on "
        "the clean file (bar: skip and dead_letter >= 0.7x).\n",
        "| mode | seconds | rows out | rows/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (secs, n) in results.items():
        lines.append(f"| {name} | {secs:.2f} | {n:,} | {n / secs:,.0f} | {n / secs / strict_rate:.2f}x |")
    lines.append(f"\nDead-letter reasons seen: {', '.join(reasons)}. "
                 "DuckDB runs in-process (no process start-up), FlowEngine times include it.\n")
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        (HERE / "TOLERANT_RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
