//! Under a memory limit far below the data (64 MiB against ~160 MB), sorts and aggregations
//! spill to disk and finish with the right result; a plan that cannot spill (a hash join's build
//! side, which DataFusion 55 keeps in memory) fails with a clear resources-exhausted error
//! instead of being killed.
//!
//! The configuration sets only the limit, the pool and the spill directory: FlowEngine then
//! plans with one partition per 256 MiB of pool (`EngineConfig::effective_target_partitions`),
//! without which DataFusion's per-partition merge reservations leave the sorts no room.

mod common;

use common::{flowengine, write_pipeline};
use predicates::prelude::*;

/// ~2 M rows x ~80 bytes: about 160 MB of data against a 64 MiB pool.
const DATA: &str = "\
COPY (SELECT value AS k, value % 1000 AS g, concat(repeat('x', 60), CAST(value AS VARCHAR)) AS pad
      FROM range(2000000))
TO '${DIR}/big.parquet' STORED AS PARQUET;
";

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_pipeline(dir.path(), "data.sql", DATA);
    flowengine()
        .arg("run")
        .arg(&data)
        .arg("--var")
        .arg(format!("DIR={}", dir.path().display()))
        .assert()
        .success();
    let config = dir.path().join("flowengine.toml");
    std::fs::write(
        &config,
        format!(
            "memory_limit = \"64MiB\"\nmemory_pool = \"fair\"\nspill_dir = \"{}\"\n",
            dir.path().join("spill").display()
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn a_plan_that_cannot_spill_fails_with_resources_exhausted() {
    let (dir, config) = setup();
    let pipeline = write_pipeline(
        dir.path(),
        "hash.sql",
        "\
CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '${DIR}/big.parquet';
SELECT count(*) FROM big a JOIN big b ON a.pad = b.pad;
",
    );
    flowengine()
        .arg("--config")
        .arg(&config)
        .arg("run")
        .arg(&pipeline)
        .arg("--var")
        .arg(format!("DIR={}", dir.path().display()))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Resources exhausted"));
}

#[test]
fn sorts_and_aggregations_spill_and_finish() {
    let (dir, config) = setup();
    let pipeline = write_pipeline(
        dir.path(),
        "spill.sql",
        "\
CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '${DIR}/big.parquet';
COPY (SELECT * FROM big ORDER BY pad DESC) TO '${DIR}/sorted.parquet';
CREATE EXTERNAL TABLE sorted STORED AS PARQUET LOCATION '${DIR}/sorted.parquet';
CREATE TABLE first AS SELECT k FROM sorted LIMIT 1;
SELECT (SELECT count(*) FROM sorted) AS sorted_rows, (SELECT k FROM first) AS first_k,
       count(*) AS groups, sum(n) AS grouped_rows
FROM (SELECT pad, count(*) AS n FROM big GROUP BY pad);
",
    );
    let out = flowengine()
        .arg("--config")
        .arg(&config)
        .arg("run")
        .arg(&pipeline)
        .args(["--format", "csv", "--var"])
        .arg(format!("DIR={}", dir.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Every row sorted (the largest pad, "x..x999999", first) and every one of the 2M distinct
    // keys grouped once.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sorted_rows,first_k,groups,grouped_rows\n2000000,999999,2000000,2000000\n"
    );
    // They did spill: DataFusion's own metrics say so.
    for query in [
        "SELECT k FROM big ORDER BY pad DESC",
        "SELECT pad, count(*) FROM big GROUP BY pad",
    ] {
        let explain = write_pipeline(
            dir.path(),
            "explain.sql",
            &format!(
                "CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '${{DIR}}/big.parquet';\nEXPLAIN ANALYZE {query};\n"
            ),
        );
        let out = flowengine()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .arg(&explain)
            .args(["--format", "csv", "--var"])
            .arg(format!("DIR={}", dir.path().display()))
            .output()
            .unwrap();
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spills: u64 = plan
            .split("spill_count=")
            .skip(1)
            .filter_map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        assert!(spills > 0, "{query}: no spill in\n{plan}");
    }
    // The spill directory was used and cleaned up.
    let spill = dir.path().join("spill");
    assert!(spill.is_dir());
    assert_eq!(
        walk_files(&spill),
        0,
        "spill files left behind in {}",
        spill.display()
    );
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk_files(&p) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}
