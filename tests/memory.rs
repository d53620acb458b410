//! Under a memory limit far below the data (64 MiB against ~160 MB), sorts, aggregations and
//! joins spill to disk and finish with the right result (joins as sort-merge joins, which
//! FlowEngine plans when a hash join's build side would not fit: `spillable_joins`); a plan
//! that cannot spill (a hash join, kept with `spillable_joins = "never"`) fails with a clear
//! resources-exhausted error instead of being killed.
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
    setup_with("")
}

fn setup_with(extra_config: &str) -> (tempfile::TempDir, std::path::PathBuf) {
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
            "memory_limit = \"64MiB\"\nmemory_pool = \"fair\"\nspill_dir = \"{}\"\n{extra_config}",
            dir.path().join("spill").display()
        ),
    )
    .unwrap();
    (dir, config)
}

/// Run `sql` (after declaring `big`) under `config` with CSV output; its stdout, asserting success.
fn run_csv(dir: &std::path::Path, config: &std::path::Path, name: &str, sql: &str) -> String {
    let pipeline = write_pipeline(
        dir,
        name,
        &format!(
            "CREATE EXTERNAL TABLE big STORED AS PARQUET LOCATION '${{DIR}}/big.parquet';\n{sql}\n"
        ),
    );
    let out = flowengine()
        .arg("--config")
        .arg(config)
        .arg("run")
        .arg(&pipeline)
        .args(["--format", "csv", "--var"])
        .arg(format!("DIR={}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_plan_that_cannot_spill_fails_with_resources_exhausted() {
    let (dir, config) = setup_with("spillable_joins = \"never\"\n");
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
        let plan = run_csv(
            dir.path(),
            &config,
            "explain.sql",
            &format!("EXPLAIN ANALYZE {query};"),
        );
        let spills = spill_count(&plan);
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

/// The sum of `spill_count=` metrics in an `EXPLAIN ANALYZE` output.
fn spill_count(plan: &str) -> u64 {
    plan.split("spill_count=")
        .skip(1)
        .filter_map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn joins_whose_build_side_does_not_fit_spill_and_finish() {
    let (dir, config) = setup();
    let run = |name: &str, sql: &str| run_csv(dir.path(), &config, name, sql);
    // The join the hash-join test above cannot run: 2M x 2M rows on an 80-byte key.
    let join = "SELECT count(*) AS n, sum(a.k) AS keys, sum(b.g) AS g \
                FROM big a JOIN big b ON a.pad = b.pad";
    assert_eq!(
        run("join.sql", &format!("{join};")),
        "n,keys,g\n2000000,1999999000000,999000000\n"
    );
    // Outer joins keep unmatched rows: half of the keys find a partner.
    assert_eq!(
        run(
            "left.sql",
            "SELECT count(*) AS n, count(b.k) AS matched FROM big a \
             LEFT JOIN big b ON a.k = b.k + 1000000;"
        ),
        "n,matched\n2000000,1000000\n"
    );
    // It ran as a sort-merge join whose sorts spilled.
    let plan = run("explain.sql", &format!("EXPLAIN ANALYZE {join};"));
    assert!(plan.contains("SortMergeJoinExec"), "{plan}");
    assert!(!plan.contains("HashJoinExec"), "{plan}");
    assert!(spill_count(&plan) > 0, "no spill in\n{plan}");
    assert_eq!(
        walk_files(&dir.path().join("spill")),
        0,
        "spill files left behind"
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
