#!/usr/bin/env python3
"""NATS JetStream -> Parquet throughput (issue 7): FlowEngine reading a stream of 200-byte JSON
messages into a Parquet file with one `flowengine run`, against a bare async-nats consumer loop
that only acknowledges each message (benches/queues/nats_bench.rs), alternating in one run,
median of N. Writes benches/QUEUE_RESULTS.md.

Usage: python3 benches/queues.py [--messages 1000000] [--runs 3] [--server 127.0.0.1:4222]
Needs NATS with JetStream on the server address, and release builds (built here if missing):
    cargo build --release && cargo build --release --example nats_bench
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"


def build(binary, example):
    if not Path(binary).exists():
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    if not Path(example).exists():
        subprocess.run(["cargo", "build", "--release", "--example", "nats_bench"], cwd=REPO, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--server", default="127.0.0.1:4222")
    ap.add_argument("--binary", default=str(TARGET / "flowengine"))
    ap.add_argument("--example", default=str(TARGET / "examples" / "nats_bench"))
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    build(args.binary, args.example)
    n = args.messages
    stream, subject = f"FE_BENCH_{os.getpid()}", f"bench.{os.getpid()}.events"
    t0 = time.perf_counter()
    subprocess.run([args.example, "publish", args.server, stream, subject, str(n)], check=True)
    print(f"published {n:,} messages in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    bare, flow = [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pipeline = work / "nats_to_parquet.sql"
        pipeline.write_text(
            "CREATE EXTERNAL TABLE ev (id BIGINT NOT NULL, name VARCHAR, amount DOUBLE, pad VARCHAR)\n"
            f"  STORED AS NATS LOCATION 'nats://{args.server}/{subject}'\n"
            f"  OPTIONS ('stream' '{stream}', 'max_messages' '{n}');\n"
            f"COPY (SELECT id, name, amount, pad FROM ev) TO '{work}/out_${{run}}.parquet' STORED AS PARQUET;\n")
        for run in range(args.runs):
            r = subprocess.run([args.example, "consume", args.server, stream, subject, str(n)],
                               check=True, capture_output=True, text=True)
            bare.append(float(r.stdout.split('"seconds": ')[1].rstrip("}\n")))
            env = dict(os.environ, FLOWENGINE_STATE_DIR=str(work / "state"))
            t = time.perf_counter()
            r = subprocess.run([args.binary, "run", str(pipeline), "--var", f"run={run}"],
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"flowengine failed: {r.stderr[-2000:]}")
            flow.append(time.perf_counter() - t)
            if f"{n:,} rows written" not in r.stderr and f"{n} rows written" not in r.stderr:
                sys.exit(f"flowengine did not write {n} rows: {r.stderr[-2000:]}")
            print(f"run {run + 1}: bare {n / bare[-1]:,.0f} msg/s, flowengine {n / flow[-1]:,.0f} msg/s",
                  file=sys.stderr)
    subprocess.run([args.example, "delete", args.server, stream], check=True)
    b, f = n / statistics.median(bare), n / statistics.median(flow)
    lines = [
        "# NATS JetStream -> Parquet throughput\n",
        f"{n:,} JSON messages of 200 bytes in one stream on the local NATS; median of {args.runs} "
        f"alternating runs on the 2-core machine, {Path(args.binary).parent.name} builds.\n",
        "| consumer | messages/s | ratio |",
        "|---|---:|---:|",
        f"| bare async-nats pull consumer, explicit ack per message (nothing decoded or written) | {b:,.0f} | 1.00 |",
        f"| `flowengine run`: decode JSON, write Parquet, commit (whole process, start-up included) | {f:,.0f} | {f / b:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        (REPO / "benches" / "QUEUE_RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
