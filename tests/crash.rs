//! Crash safety of file sinks: a process killed with SIGKILL in the middle of a write leaves the
//! previous state intact. Nothing is cleaned up by the dying process; only staging names (which
//! readers ignore) may remain.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Start `flowengine run p`, wait until a staging file appears under `watch`, SIGKILL it.
fn kill_while_writing(p: &Path, watch: &Path) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("flowengine"))
        .arg("run")
        .arg(p)
        .env("FLOWENGINE_STATE_DIR", p.parent().unwrap().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let staging = || tree(watch).iter().any(|f| f.contains(".flowengine-"));
    while !staging() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(staging(), "the write never started: {:?}", tree(watch));
    // Let it write for a while, then kill without warning.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

/// Rows of a query over `table_sql`, by a fresh process.
fn count(dir: &Path, table_sql: &str) -> String {
    let p = write_pipeline(
        dir,
        "count.sql",
        &format!("{table_sql}\nSELECT count(*) FROM t;\n"),
    );
    let o = flowengine()
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

const BIG: &str =
    "SELECT value AS id, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 300000000)";

#[test]
fn sigkill_during_copy_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out/data.parquet");
    let first = write_pipeline(
        dir.path(),
        "first.sql",
        &format!(
            "COPY (SELECT value AS id FROM generate_series(1, 1000)) TO '{}';\n",
            target.display()
        ),
    );
    flowengine().arg("run").arg(&first).assert().success();
    let before = std::fs::read(&target).unwrap();

    let big = write_pipeline(
        dir.path(),
        "big.sql",
        &format!("COPY ({BIG}) TO '{}';\n", target.display()),
    );
    kill_while_writing(&big, &dir.path().join("out"));

    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "the old file was changed"
    );
    assert_eq!(parquet_rows(&target), 1000);
    let table = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}';",
        target.display()
    );
    assert_eq!(count(dir.path(), &table), "1000");
}

#[test]
fn sigkill_during_insert_keeps_the_table_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let table_dir = dir.path().join("table");
    let table = format!(
        "CREATE EXTERNAL TABLE t (id BIGINT, h VARCHAR) STORED AS PARQUET LOCATION '{}/';",
        table_dir.display()
    );
    let seed = write_pipeline(
        dir.path(),
        "seed.sql",
        &format!("{table}\nINSERT INTO t SELECT value, 'x' FROM generate_series(1, 500);\n"),
    );
    flowengine().arg("run").arg(&seed).assert().success();
    let files_before: Vec<String> = tree(&table_dir);

    let big = write_pipeline(
        dir.path(),
        "big.sql",
        &format!("{table}\nINSERT INTO t {BIG};\n"),
    );
    kill_while_writing(&big, &table_dir);

    // The table still reads exactly the seeded rows: leftovers are hidden staging files only.
    assert_eq!(count(dir.path(), &table), "500");
    let visible: Vec<String> = tree(&table_dir)
        .into_iter()
        .filter(|f| !f.contains(".flowengine-"))
        .collect();
    assert_eq!(visible, files_before);
}
