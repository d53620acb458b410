#!/usr/bin/env python3
"""Flight SQL throughput of `flowengine serve`, measured against local pyarrow in the same run.

    python3 benches/flight.py [--sf 1] [--runs 3] [--binary PATH] [--seconds 10] [--no-report]

1. Generates TPC-H data with tpchgen-cli (shared with benches/run.py) if missing.
2. Starts `flowengine serve` with `lineitem` as a Parquet table and as an in-memory table.
3. Alternating, `--runs` times, each measurement after one unmeasured pass of the same path
   (steady state for every path), medians reported:
   - local: pyarrow.parquet reads lineitem.parquet (all columns) in this process;
   - Flight from Parquet: `SELECT * FROM lineitem` streamed to a pyarrow.flight client;
   - Flight from memory: `SELECT * FROM lineitem_mem` streamed the same way.
   Rates are rows/s and MB/s of Arrow data received (each side's own Arrow bytes: DataFusion sends
   strings as Utf8View, pyarrow reads them as Utf8, so row rates are the fair comparison).
4. Point queries: 16 concurrent clients run `SELECT * FROM nation WHERE n_nationkey = k` for
   `--seconds`, once with pyarrow.flight (GetFlightInfo + DoGet) and once through ADBC's DB-API with a
   bound parameter (prepared statement path); reports queries/s.
Writes benches/FLIGHT_RESULTS.md unless --no-report.
"""
import argparse
import importlib.util
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.flight as flight
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_run", REPO / "benches" / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
log = bench_run.log

TYPE_URL = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, payload):
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def statement(sql):
    """A Flight SQL CommandStatementQuery packed in protobuf Any."""
    return flight.FlightDescriptor.for_command(_field(1, TYPE_URL) + _field(2, _field(1, sql.encode())))


class Server:
    def __init__(self, binary, catalog):
        self.proc = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1:0", "--admin-bind", "off", "--catalog", str(catalog)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            # A loopback benchmark server without users: authentication off, explicitly.
            env={**os.environ, "FLOWENGINE_LOG": "warn", "FLOWENGINE_AUTH": "none"})
        self.uri = None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            m = re.search(r"listening on (grpc://[0-9.:]+)", line)
            if m:
                self.uri = m.group(1)
            if line.strip() == "flowengine: ready":
                break
        if not self.uri:
            raise RuntimeError("server did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def process_cpu(pid):
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def with_cpu(measure, server_pid):
    """`measure()`'s (seconds, rows, bytes) plus the CPU seconds it took here and on the server."""
    c0, s0 = own_cpu(), process_cpu(server_pid)
    secs, rows, nbytes = measure()
    return secs, rows, nbytes, own_cpu() - c0, process_cpu(server_pid) - s0


def stream(client, sql):
    t0 = time.perf_counter()
    info = client.get_flight_info(statement(sql))
    rows = nbytes = 0
    for ep in info.endpoints:
        for chunk in client.do_get(ep.ticket):
            rows += chunk.data.num_rows
            nbytes += chunk.data.nbytes
    return time.perf_counter() - t0, rows, nbytes


def local_read(path):
    t0 = time.perf_counter()
    table = pq.read_table(path)
    return time.perf_counter() - t0, table.num_rows, table.nbytes


def run_clients(clients, seconds, session):
    """Run `session(i, stop, count)` in `clients` threads; each counts its queries. Returns q/s."""
    stop = time.time() + seconds
    counts = [0] * clients
    errors = []

    def worker(i):
        try:
            session(i, stop, counts)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"point queries failed: {errors[:3]}")
    return sum(counts) / (time.perf_counter() - t0)


def point_queries_flight(uri, clients, seconds):
    def session(i, stop, counts):
        c = flight.connect(uri)
        k = i
        while time.time() < stop:
            info = c.get_flight_info(statement(f"SELECT * FROM nation WHERE n_nationkey = {k % 25}"))
            assert c.do_get(info.endpoints[0].ticket).read_all().num_rows == 1
            counts[i] += 1
            k += 7

    return run_clients(clients, seconds, session)


def point_queries_adbc(uri, clients, seconds):
    from adbc_driver_flightsql import dbapi

    def session(i, stop, counts):
        with dbapi.connect(uri) as conn, conn.cursor() as cur:
            k = i
            while time.time() < stop:
                cur.execute("SELECT * FROM nation WHERE n_nationkey = ?", (k % 25,))
                assert len(cur.fetchall()) == 1
                counts[i] += 1
                k += 7

    return run_clients(clients, seconds, session)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("FLOWENGINE_BENCH_DATA", "/var/tmp/flowengine-bench"))
    ap.add_argument("--binary", help="flowengine binary (default: build with cargo --release)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()

    binary = args.binary
    if not binary:
        log("building flowengine (release) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "flowengine"], cwd=REPO, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        binary = str(target / "release" / "flowengine")
    base = bench_run.generate(Path(args.data_dir), args.sf)
    lineitem = base / "parquet" / "lineitem.parquet"
    nation = base / "parquet" / "nation.parquet"

    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.sql"
        catalog.write_text(
            f"CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{lineitem}';\n"
            f"CREATE TABLE lineitem_mem AS SELECT * FROM lineitem;\n"
            f"CREATE EXTERNAL TABLE nation_pq STORED AS PARQUET LOCATION '{nation}';\n"
            f"CREATE TABLE nation AS SELECT * FROM nation_pq;\n")
        log("starting flowengine serve (loads lineitem into memory) ...")
        server = Server(binary, catalog)
        try:
            client = flight.connect(server.uri)
            stream(client, "SELECT * FROM lineitem LIMIT 10")  # warm up the connection
            res = {"local pyarrow (Parquet)": [], "Flight from Parquet": [], "Flight from memory": []}
            paths = {
                "local pyarrow (Parquet)": lambda: local_read(lineitem),
                "Flight from Parquet": lambda: stream(client, "SELECT * FROM lineitem"),
                "Flight from memory": lambda: stream(client, "SELECT * FROM lineitem_mem"),
            }
            for r in range(args.runs):
                log(f"run {r + 1}/{args.runs}")
                for name, measure in paths.items():
                    # One unmeasured pass first: the first read after a different path pays for
                    # this process's allocator returning and re-faulting ~1.3 GB (a local read
                    # right after a Flight stream took 1.3 s instead of 0.7 s), which would
                    # flatter whichever path came second.
                    measure()
                    res[name].append(with_cpu(measure, server.proc.pid))
            log(f"point queries: {args.clients} clients x {args.seconds:g}s ...")
            qps_flight = point_queries_flight(server.uri, args.clients, args.seconds)
            qps_adbc = point_queries_adbc(server.uri, args.clients, args.seconds)
        finally:
            server.stop()

    rows_local = None
    table = ["| path | median s | rows/s | MB/s (Arrow) | rows/s vs local pyarrow | CPU s: client + server |",
             "|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for name, samples in res.items():
        secs = statistics.median(x[0] for x in samples)
        rows = samples[0][1]
        mb = statistics.median(x[2] for x in samples) / 1e6
        client_cpu = statistics.median(x[3] for x in samples)
        server_cpu = statistics.median(x[4] for x in samples)
        rps = rows / secs
        if rows_local is None:
            rows_local = rps
        summary[name] = (secs, rps, mb / secs)
        table.append(f"| {name} | {secs:.2f} | {rps:,.0f} | {mb / secs:,.0f} | {rps / rows_local:.2f}x | "
                     f"{client_cpu:.2f} + {server_cpu:.2f} |")
    mem = bench_run.machine()
    text = "\n".join([
        "# Flight SQL throughput",
        "",
        f"Generated by `python3 benches/flight.py --sf {args.sf:g} --runs {args.runs}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Machine: {mem}. Client: pyarrow {__import__('pyarrow').__version__} in one Python process on the "
        f"same machine (loopback). lineitem SF{args.sf:g}: {samples[0][1]:,} rows, all 16 columns.",
        "",
        *table,
        "",
        "CPU s: median CPU time of the client process (user + system, all threads) and of the server "
        "process during one measurement; the machine has 2 cores, so a path cannot finish faster "
        "than (client + server) / 2 seconds.",
        "",
        f"Point query (`SELECT * FROM nation WHERE n_nationkey = k`, {args.clients} concurrent clients, "
        f"{args.seconds:g} s): **{qps_flight:,.0f} queries/s** with pyarrow.flight "
        f"(GetFlightInfo + DoGet), **{qps_adbc:,.0f} queries/s** through ADBC's DB-API "
        f"(prepared statement with a bound parameter: 4 round trips per query).",
        "",
    ])
    print(text)
    if not args.no_report:
        (REPO / "benches" / "FLIGHT_RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
