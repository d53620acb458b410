#!/usr/bin/env python3
"""Cluster benchmark: the 22 TPC-H queries on a local Ballista cluster (1 scheduler + 2
executors, all `flowengine` processes on this machine) against single-node FlowEngine, in the
same run, alternating, median of several runs; plus a point lookup's latency on both.

  python3 benches/cluster.py [--sf 1] [--runs 3] [--binary target/release/flowengine]

On one machine this measures the overhead of distribution (planning on the scheduler, task
scheduling, shuffles through Arrow Flight and local files), not the gain of more machines.
Results must equal the single node's. Writes benches/CLUSTER_RESULTS.md unless --no-report.
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402  (TABLES, generate, compare, machine, log)

HERE = Path(__file__).resolve().parent
LOOKUP = "SELECT o_orderkey, o_totalprice, o_orderdate FROM orders WHERE o_orderkey = 1200005"


def free_port_pair():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
        finally:
            t.close()


def wait_port(port):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


class LocalCluster:
    def __init__(self, binary, workdir, executors=2, tasks=None):
        self.procs = []
        port = free_port_pair()
        env = dict(os.environ, FLOWENGINE_LOG="warn")
        log = open(Path(workdir) / "cluster.log", "w")
        self.procs.append(subprocess.Popen(
            [binary, "scheduler", "--bind", f"127.0.0.1:{port}"], stderr=log, stdout=subprocess.DEVNULL, env=env))
        wait_port(port)
        tasks = tasks or max(1, (os.cpu_count() or 2) // executors)
        for i in range(executors):
            flight = free_port_pair()
            work = Path(workdir) / f"executor{i}"
            work.mkdir(exist_ok=True)
            self.procs.append(subprocess.Popen(
                [binary, "executor", "--scheduler", f"127.0.0.1:{port}", "--bind", f"127.0.0.1:{flight}",
                 "--concurrent-tasks", str(tasks), "--work-dir", str(work)],
                stderr=log, stdout=subprocess.DEVNULL, env=env))
            wait_port(flight)
            wait_port(flight + 1)
        self.url = f"df://127.0.0.1:{port}"

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def run_pipeline(binary, text, workdir, cluster=None):
    p = Path(workdir) / "pipeline.sql"
    p.write_text(text)
    cmd = [binary] + (["--cluster", cluster] if cluster else []) + ["run", str(p), "--format", "csv"]
    r = subprocess.run(cmd, text=True, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"flowengine failed: {r.stderr[-3000:]}")
    times = [float(m.group(1)) for m in re.finditer(r"  (\d+\.\d+)s$", r.stderr, re.M)]
    return r, times


def tables(pq_dir):
    return "\n".join(f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{pq_dir}/{t}.parquet';"
                     for t in harness.TABLES)


def results(binary, pq_dir, query, cluster=None):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(tables(pq_dir))
    cmd = [binary] + (["--cluster", cluster] if cluster else []) + [
        "sql", "--init", f.name, "--format", "csv", "-c", query]
    r = subprocess.run(cmd, text=True, capture_output=True)
    os.unlink(f.name)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    import csv, io
    return list(csv.reader(io.StringIO(r.stdout)))[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("FLOWENGINE_BENCH_DATA", "/var/tmp/flowengine-bench"))
    ap.add_argument("--binary", required=True, help="flowengine binary (release build)")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    base = harness.generate(Path(args.data_dir), args.sf)
    pq_dir = base / "parquet"
    qfiles = sorted(HERE.glob("tpch/q*.sql"))
    queries = [(f.stem.upper(), f.read_text()) for f in qfiles]
    work = tempfile.mkdtemp(prefix="fe-cluster-bench-")
    cluster = LocalCluster(args.binary, work)
    try:
        harness.log(f"cluster at {cluster.url}; checking results ...")
        for name, q in queries:
            diff = harness.compare(results(args.binary, pq_dir, q, cluster.url), results(args.binary, pq_dir, q))
            if diff:
                sys.exit(f"{name}: cluster result differs from single node: {diff}")
        text = tables(pq_dir) + "\n" + "\n".join(q for _, q in queries) + "\n"
        lookup = tables(pq_dir) + "\n" + "\n".join([LOOKUP + ";"] * 5) + "\n"
        single, dist, single_lk, dist_lk = [], [], [], []
        for i in range(args.runs):
            harness.log(f"run {i + 1}/{args.runs}")
            _, t = run_pipeline(args.binary, text, work)
            single.append(t[len(harness.TABLES):])
            _, t = run_pipeline(args.binary, text, work, cluster.url)
            dist.append(t[len(harness.TABLES):])
            _, t = run_pipeline(args.binary, lookup, work)
            single_lk.append(statistics.median(t[len(harness.TABLES):]))
            _, t = run_pipeline(args.binary, lookup, work, cluster.url)
            dist_lk.append(statistics.median(t[len(harness.TABLES):]))
    finally:
        cluster.stop()
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    rows = [(name, med(single, i), med(dist, i)) for i, (name, _) in enumerate(queries)]
    ts, td = sum(r[1] for r in rows), sum(r[2] for r in rows)
    ls, ld = statistics.median(single_lk), statistics.median(dist_lk)
    lines = ["| query | single node s | cluster s | cluster / single |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | {b / a:.2f} |" for n, a, b in rows]
    lines.append(f"| **total** | **{ts:.2f}** | **{td:.2f}** | **{td / ts:.2f}** |")
    table = "\n".join(lines)
    print(table)
    print(f"point lookup: single node {ls * 1000:.0f} ms, cluster {ld * 1000:.0f} ms")
    if not args.no_report:
        # The hand-written analysis below the marker survives a regenerated table.
        report = HERE / "CLUSTER_RESULTS.md"
        previous = report.read_text() if report.exists() else ""
        analysis = previous[previous.find(ANALYSIS):] if ANALYSIS in previous else ""
        report.write_text(
            f"# Cluster benchmark (Ballista)\n\nGenerated by `python3 benches/cluster.py --sf {args.sf:g} "
            f"--runs {args.runs}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Binary: `{args.binary}`"
            f"{' (a debug build: dependencies at opt-level 1, FlowEngine unoptimised)' if '/debug/' in args.binary else ''}. "
            f"Machine: {harness.machine()}. Cluster: 1 scheduler + 2 executors on this machine, "
            f"{max(1, (os.cpu_count() or 2) // 2)} concurrent tasks each; single node: one `flowengine run` "
            f"process. Statements timed inside the client (planning, scheduling and fetching included); "
            f"medians of the runs. Results were checked equal to the single node's for all 22 queries.\n\n"
            f"## TPC-H SF{args.sf:g} over Parquet\n\n{table}\n\n"
            f"## Point lookup\n\n`{LOOKUP}`: single node {ls * 1000:.0f} ms, cluster {ld * 1000:.0f} ms "
            f"(median of 5 lookups per run).\n" + ("\n" + analysis if analysis else ""))


# Marks the start of the hand-written part of CLUSTER_RESULTS.md.
ANALYSIS = "<!-- analysis: kept when the tables above are regenerated -->"


if __name__ == "__main__":
    main()
