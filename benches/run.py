#!/usr/bin/env python3
"""FlowEngine benchmark harness: FlowEngine vs DuckDB (and datafusion-cli / stock DataFusion
via the `datafusion` Python package when available), measured in the same run, alternating
engines, median of several runs.

  python3 benches/run.py [--sf 1] [--runs 3] [--data-dir /var/tmp/flowengine-bench]

1. Generates TPC-H data with tpchgen-cli (CSV and Parquet) if missing.
2. ETL: lineitem.csv -> cast/derive columns, filter -> Parquet (zstd), rows/s per engine.
3. TPC-H: the 22 queries in benches/tpch/ over Parquet; results are compared with DuckDB's.
4. Prints a table of medians and ratios and writes benches/RESULTS.md and benches/tpch_chart.svg.
"""
import argparse
import datetime
import decimal
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]

LINEITEM_COLUMNS = [
    ("l_orderkey", "BIGINT"), ("l_partkey", "BIGINT"), ("l_suppkey", "BIGINT"), ("l_linenumber", "INT"),
    ("l_quantity", "DECIMAL(15,2)"), ("l_extendedprice", "DECIMAL(15,2)"), ("l_discount", "DECIMAL(15,2)"),
    ("l_tax", "DECIMAL(15,2)"), ("l_returnflag", "VARCHAR"), ("l_linestatus", "VARCHAR"),
    ("l_shipdate", "DATE"), ("l_commitdate", "DATE"), ("l_receiptdate", "DATE"),
    ("l_shipinstruct", "VARCHAR"), ("l_shipmode", "VARCHAR"), ("l_comment", "VARCHAR"),
]

# The ETL transform, identical SQL text in every engine: casts, derived columns, a filter.
ETL_SELECT = """SELECT l_orderkey, l_linenumber, l_partkey, l_suppkey,
       CAST(l_quantity AS INT) AS quantity,
       l_extendedprice AS gross,
       CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(15,2)) AS net,
       CAST(l_extendedprice * (1 - l_discount) * (1 + l_tax) AS DECIMAL(15,2)) AS charge,
       l_receiptdate - l_shipdate AS transit_days,
       CASE WHEN l_receiptdate > l_commitdate THEN true ELSE false END AS late,
       upper(l_shipmode) AS ship_mode,
       l_returnflag || l_linestatus AS flags,
       l_shipdate
FROM lineitem
WHERE l_shipdate >= DATE '1993-01-01' AND l_discount > 0.01"""


def datafusion_etl_sql(csv_path, out_path):
    """The ETL as a DataFusion SQL script (FlowEngine, datafusion-cli)."""
    cols = ", ".join(f"{c} {t}" for c, t in LINEITEM_COLUMNS)
    return (f"CREATE EXTERNAL TABLE lineitem ({cols}) STORED AS CSV LOCATION '{csv_path}' "
            f"OPTIONS ('format.has_header' 'true');\n"
            f"COPY ({ETL_SELECT}) TO '{out_path}' STORED AS PARQUET "
            f"OPTIONS ('format.compression' 'zstd(1)');\n")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-3000:]}")
    return r


# ---------------------------------------------------------------- data

def generate(data_dir: Path, sf: float):
    base = data_dir / f"sf{sf:g}"
    for fmt in ("csv", "parquet"):
        out = base / fmt
        if all((out / f"{t}.{fmt}").exists() for t in TABLES):
            continue
        log(f"generating TPC-H SF{sf:g} {fmt} in {out} ...")
        out.mkdir(parents=True, exist_ok=True)
        tpchgen = shutil.which("tpchgen-cli")
        if not tpchgen:
            sys.exit("tpchgen-cli not found: pip install tpchgen-cli")
        run([tpchgen, fmt, "-s", f"{sf:g}", "-o", str(out), "--overwrite"])
    return base


# ---------------------------------------------------------------- engines

class FlowEngine:
    name = "flowengine"

    def __init__(self, binary):
        self.binary = binary

    def _run(self, pipeline_text, workdir):
        p = Path(workdir) / "pipeline.sql"
        p.write_text(pipeline_text)
        r = subprocess.run([self.binary, "run", str(p), "--format", "csv"], text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"flowengine failed: {r.stderr[-2000:]}")
        times = [float(m.group(1)) for m in re.finditer(r"  (\d+\.\d+)s$", r.stderr, re.M)]
        return r, times

    def etl(self, csv_path, out_path, workdir):
        text = datafusion_etl_sql(csv_path, out_path)
        r, times = self._run(text, workdir)
        # The COPY statement's own time, as DuckDB's and DataFusion's are timed in-process
        # around the COPY alone (process start and table registration excluded everywhere).
        elapsed = times[-1]
        rows = int(re.search(r"COPY  ([\d,]+) rows written", r.stderr).group(1).replace(",", ""))
        return elapsed, rows

    def tpch(self, parquet_dir, queries, workdir):
        """All queries in one process; per-query times from the summary lines."""
        lines = [f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{parquet_dir}/{t}.parquet';"
                 for t in TABLES]
        lines += [q for _, q in queries]
        r, times = self._run("\n".join(lines) + "\n", workdir)
        return times[len(TABLES):]

    def results(self, parquet_dir, query):
        init = "\n".join(f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{parquet_dir}/{t}.parquet';"
                         for t in TABLES)
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(init)
        r = run([self.binary, "sql", "--init", f.name, "--format", "csv", "-c", query])
        os.unlink(f.name)
        import csv, io
        rows = list(csv.reader(io.StringIO(r.stdout)))
        return rows[1:]


class DuckDB:
    name = "duckdb"

    def __init__(self):
        import duckdb
        self.duckdb = duckdb
        self.version = duckdb.__version__

    def etl(self, csv_path, out_path, workdir):
        con = self.duckdb.connect()
        cols = ", ".join(f"'{c}': '{t}'" for c, t in LINEITEM_COLUMNS)
        con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_csv('{csv_path}', header=true, columns={{{cols}}})")
        t0 = time.perf_counter()
        con.execute(f"COPY ({ETL_SELECT}) TO '{out_path}' (FORMAT parquet, COMPRESSION zstd)")
        elapsed = time.perf_counter() - t0
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{out_path}')").fetchone()[0]
        con.close()
        return elapsed, rows

    def _connect(self, parquet_dir):
        con = self.duckdb.connect()
        for t in TABLES:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{parquet_dir}/{t}.parquet')")
        return con

    def tpch(self, parquet_dir, queries, workdir):
        con = self._connect(parquet_dir)
        times = []
        for _, q in queries:
            t0 = time.perf_counter()
            con.execute(q).fetchall()
            times.append(time.perf_counter() - t0)
        con.close()
        return times

    def results(self, parquet_dir, query):
        con = self._connect(parquet_dir)
        rows = con.execute(query).fetchall()
        con.close()
        return rows


class DataFusionCli:
    name = "datafusion-cli"

    def __init__(self, binary):
        self.binary = binary
        self.version = run([binary, "--version"]).stdout.strip()

    def _run(self, text, workdir):
        p = Path(workdir) / "dfcli.sql"
        p.write_text(text)
        r = run([self.binary, "-f", str(p)], cwd=workdir)
        return [float(x) for x in re.findall(r"Elapsed (\d+\.\d+) seconds", r.stdout)]

    def etl(self, csv_path, out_path, workdir):
        text = datafusion_etl_sql(csv_path, out_path)
        return self._run(text, workdir)[-1], None

    def tpch(self, parquet_dir, queries, workdir):
        lines = [f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{parquet_dir}/{t}.parquet';"
                 for t in TABLES]
        lines += [q for _, q in queries]
        times = self._run("\n".join(lines) + "\n", workdir)
        return times[len(TABLES):]


class DataFusionPython:
    """Stock DataFusion (the `datafusion` PyPI package), default settings: a reference for
    what FlowEngine's own tuning adds. In-process, like DuckDB."""
    name = "datafusion-python"

    def __init__(self):
        import datafusion
        self.df = datafusion
        self.version = datafusion.__version__

    def etl(self, csv_path, out_path, workdir):
        import pyarrow as pa  # noqa: F401
        ctx = self.df.SessionContext()
        cols = ", ".join(f"{c} {t}" for c, t in LINEITEM_COLUMNS)
        ctx.sql(f"CREATE EXTERNAL TABLE lineitem ({cols}) STORED AS CSV LOCATION '{csv_path}' "
                f"OPTIONS ('format.has_header' 'true')").collect()
        t0 = time.perf_counter()
        ctx.sql(f"COPY ({ETL_SELECT}) TO '{out_path}' STORED AS PARQUET "
                f"OPTIONS ('format.compression' 'zstd(1)')").collect()
        return time.perf_counter() - t0, None

    def tpch(self, parquet_dir, queries, workdir):
        ctx = self.df.SessionContext()
        for t in TABLES:
            ctx.sql(f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{parquet_dir}/{t}.parquet'").collect()
        times = []
        for _, q in queries:
            t0 = time.perf_counter()
            ctx.sql(q).collect()
            times.append(time.perf_counter() - t0)
        return times


class FreshProcess:
    """Runs an in-process engine's timed work (ETL, the 22 queries) in a new Python process per
    run, as FlowEngine and datafusion-cli run as new processes: no engine keeps a warm heap
    from earlier runs. Result checks stay in this process (they are not timed)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.version = inner.version

    def _worker(self, task, payload):
        r = run([sys.executable, str(Path(__file__).resolve()), "--worker", self.name, "--task", task],
                input=json.dumps(payload))
        return json.loads(r.stdout)

    def etl(self, csv_path, out_path, workdir):
        secs, rows = self._worker("etl", {"csv": str(csv_path), "out": str(out_path), "work": str(workdir)})
        return secs, rows

    def tpch(self, parquet_dir, queries, workdir):
        return self._worker("tpch", {"pq": str(parquet_dir), "queries": queries, "work": str(workdir)})

    def results(self, parquet_dir, query):
        return self.inner.results(parquet_dir, query)


IN_PROCESS = {"duckdb": lambda: DuckDB(), "datafusion-python": lambda: DataFusionPython()}


def worker(name, task):
    payload = json.loads(sys.stdin.read())
    engine = IN_PROCESS[name]()
    if task == "etl":
        out = engine.etl(payload["csv"], payload["out"], payload["work"])
    else:
        out = engine.tpch(payload["pq"], [tuple(q) for q in payload["queries"]], payload["work"])
    print(json.dumps(out))


# ---------------------------------------------------------------- comparison

def norm(v):
    if v is None or v == "":
        return None
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, (float, decimal.Decimal)):
        return float(v)
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    s = str(v)
    try:
        return float(s)
    except ValueError:
        return s


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-2)
    return a == b


def compare(fe_rows, duck_rows):
    a = sorted([[norm(v) for v in r] for r in fe_rows], key=lambda r: [str(x) for x in r])
    b = sorted([[norm(v) for v in r] for r in duck_rows], key=lambda r: [str(x) for x in r])
    if len(a) != len(b):
        return f"{len(a)} rows vs {len(b)}"
    for ra, rb in zip(a, b):
        if len(ra) != len(rb) or not all(same(x, y) for x, y in zip(ra, rb)):
            return f"row differs: {ra} vs {rb}"
    return None


# ---------------------------------------------------------------- report

def machine():
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, {platform.system()} {platform.release()}"


def svg_chart(qnames, series, path):
    """Grouped bars per query (seconds, log-free linear scale), one color per engine."""
    colors = {"flowengine": "#2b6cb0", "duckdb": "#d69e2e", "datafusion-cli": "#718096", "datafusion-python": "#a0aec0"}
    engines = [e for e in series if series[e]]
    width, height, left, bottom, top = 1000, 420, 60, 60, 40
    plot_w, plot_h = width - left - 20, height - bottom - top
    vmax = max(max(v) for v in series.values() if v) * 1.1
    group_w = plot_w / len(qnames)
    bar_w = group_w * 0.8 / max(1, len(engines))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width/2}" y="22" text-anchor="middle" font-size="15">TPC-H query time (median seconds, lower is better)</text>']
    for i in range(6):
        v = vmax * i / 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width-20}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{left-6}" y="{y+4:.1f}" text-anchor="end">{v:.2f}</text>')
    for qi, q in enumerate(qnames):
        gx = left + qi * group_w + group_w * 0.1
        for ei, e in enumerate(engines):
            v = series[e][qi]
            h = plot_h * v / vmax
            x = gx + ei * bar_w
            out.append(f'<rect x="{x:.1f}" y="{top+plot_h-h:.1f}" width="{bar_w-1:.1f}" height="{h:.1f}" fill="{colors.get(e, "#999")}"><title>{e} {q}: {v:.3f}s</title></rect>')
        out.append(f'<text x="{gx + group_w*0.4:.1f}" y="{top+plot_h+16}" text-anchor="middle">{q}</text>')
    for ei, e in enumerate(engines):
        x = left + ei * 170
        out.append(f'<rect x="{x}" y="{height-22}" width="12" height="12" fill="{colors.get(e, "#999")}"/>')
        out.append(f'<text x="{x+18}" y="{height-12}">{e}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--worker" and sys.argv[3] == "--task":
        return worker(sys.argv[2], sys.argv[4])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("FLOWENGINE_BENCH_DATA", "/var/tmp/flowengine-bench"))
    ap.add_argument("--binary", help="flowengine binary (default: build with cargo --release)")
    ap.add_argument("--skip-etl", action="store_true")
    ap.add_argument("--skip-tpch", action="store_true")
    ap.add_argument("--queries", help="comma-separated query numbers (default all 22)")
    ap.add_argument("--no-report", action="store_true", help="do not write RESULTS.md / chart")
    args = ap.parse_args()

    binary = args.binary
    if not binary:
        log("building flowengine (release) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "flowengine"], cwd=REPO, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        binary = str(target / "release" / "flowengine")
    base = generate(Path(args.data_dir), args.sf)
    csv_dir, pq_dir = base / "csv", base / "parquet"

    engines = [FlowEngine(binary), FreshProcess(DuckDB())]
    dfcli = shutil.which("datafusion-cli")
    if dfcli:
        engines.append(DataFusionCli(dfcli))
    try:
        engines.append(FreshProcess(DataFusionPython()))
    except ImportError:
        pass
    names = [e.name for e in engines]
    log(f"engines: {', '.join(names)}")

    qfiles = sorted((HERE / "tpch").glob("q*.sql"))
    if args.queries:
        wanted = {int(x) for x in args.queries.split(",")}
        qfiles = [q for q in qfiles if int(q.stem[1:]) in wanted]
    queries = [(q.stem.upper(), q.read_text()) for q in qfiles]

    input_rows = None
    if not args.skip_etl:
        with open(csv_dir / "lineitem.csv", "rb") as f:
            input_rows = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b"")) - 1
    etl = {n: [] for n in names}
    etl_rows = None
    tp = {n: [] for n in names}
    with tempfile.TemporaryDirectory(dir=args.data_dir) as work:
        for r in range(args.runs):
            for e in engines:  # alternate engines within each run
                if not args.skip_etl:
                    out = Path(work) / f"etl_{e.name}_{r}.parquet"
                    secs, rows = e.etl(csv_dir / "lineitem.csv", out, work)
                    etl[e.name].append(secs)
                    if rows is not None:
                        if etl_rows is not None and rows != etl_rows:
                            sys.exit(f"ETL row count mismatch: {e.name} wrote {rows}, expected {etl_rows}")
                        etl_rows = rows
                    out.unlink(missing_ok=True)
                    log(f"run {r+1} {e.name} ETL {secs:.2f}s")
                if not args.skip_tpch:
                    times = e.tpch(pq_dir, queries, work)
                    if len(times) != len(queries):
                        sys.exit(f"{e.name}: expected {len(queries)} timings, got {len(times)}")
                    tp[e.name].append(times)
                    log(f"run {r+1} {e.name} TPC-H total {sum(times):.2f}s")

    mismatches = {}
    if not args.skip_tpch:
        fe, duck = engines[0], engines[1]
        for qn, q in queries:
            diff = compare(fe.results(pq_dir, q), duck.results(pq_dir, q))
            if diff:
                mismatches[qn] = diff

    lines = []
    lines.append(f"# FlowEngine benchmark results\n")
    lines.append(f"Generated by `python3 benches/run.py --sf {args.sf:g} --runs {args.runs}` on "
                 f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.\n")
    lines.append(f"Machine: {machine()}.\n")
    versions = [f"DuckDB {engines[1].version}"]
    for e in engines[2:]:
        versions.append(f"{e.name} {e.version}")
    fe_label = "release build" if not args.binary else f"binary {args.binary}"
    lines.append(f"Engines: FlowEngine (this repo, {fe_label}), " + ", ".join(versions) +
                 ". Each run alternates engines and starts every engine as a new process; statements are "
                 "timed inside the engine (startup and table registration excluded); figures are "
                 "medians of the runs.\n")
    if not args.skip_etl:
        lines.append(f"## ETL: lineitem.csv -> cast/derive/filter -> Parquet (zstd), SF{args.sf:g}\n")
        lines.append(f"{input_rows:,} input rows read, {etl_rows:,} rows written; rows/s counts input rows.\n")
        lines.append("| engine | median s | rows/s | rows/s vs DuckDB |")
        lines.append("|---|---:|---:|---:|")
        duck_med = statistics.median(etl["duckdb"])
        for n in names:
            med = statistics.median(etl[n])
            lines.append(f"| {n} | {med:.2f} | {input_rows/med:,.0f} | {duck_med/med:.2f}x |")
        lines.append("")
    if not args.skip_tpch:
        lines.append(f"## TPC-H 22 queries over Parquet, SF{args.sf:g}\n")
        lines.append("![TPC-H per-query medians](tpch_chart.svg)\n")
        head = "| query | " + " | ".join(f"{n} s" for n in names) + " | FlowEngine / DuckDB |"
        lines.append(head)
        lines.append("|---|" + "---:|" * (len(names) + 1))
        med = {n: [statistics.median(run[i] for run in tp[n]) for i in range(len(queries))] for n in names}
        for i, (qn, _) in enumerate(queries):
            row = f"| {qn} | " + " | ".join(f"{med[n][i]:.3f}" for n in names)
            row += f" | {med['flowengine'][i]/med['duckdb'][i]:.2f} |"
            lines.append(row)
        totals = {n: sum(med[n]) for n in names}
        lines.append(f"| **total** | " + " | ".join(f"**{totals[n]:.2f}**" for n in names) +
                     f" | **{totals['flowengine']/totals['duckdb']:.2f}** |")
        lines.append("")
        lines.append("Results: " + ("FlowEngine's results equal DuckDB's for every query."
                                     if not mismatches else f"MISMATCHES: {mismatches}"))
        lines.append("")
        if not args.no_report:
            svg_chart([q for q, _ in queries], med, HERE / "tpch_chart.svg")
    report = "\n".join(lines)
    print(report)
    if not args.no_report:
        (HERE / "RESULTS.md").write_text(report + "\n")
    if mismatches:
        sys.exit(f"result mismatches: {mismatches}")


if __name__ == "__main__":
    main()
