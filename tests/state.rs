//! Run state and `--resume`: a five-step pipeline fails at step 3, the cause is fixed, and the
//! resumed run neither repeats the committed write of step 2 nor loses anything.

mod common;

use common::{flowengine, write_pipeline};
use predicates::prelude::*;

const PIPELINE: &str = "\
CREATE EXTERNAL TABLE sink (id BIGINT, v VARCHAR) STORED AS CSV LOCATION '${OUT}/sink/';
INSERT INTO sink VALUES (1, 'a'), (2, 'b');
CREATE EXTERNAL TABLE src STORED AS CSV LOCATION '${IN}/input.csv';
INSERT INTO sink SELECT id, v FROM src;
COPY (SELECT count(*) AS n, count(DISTINCT id) AS ids FROM sink) TO '${OUT}/count.csv';
";

#[test]
fn failed_run_resumes_without_repeating_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    let pipeline = write_pipeline(dir.path(), "load.sql", PIPELINE);
    let run = |extra: &[&str]| {
        let mut cmd = flowengine();
        cmd.env("FLOWENGINE_STATE_DIR", &state)
            .arg("run")
            .args(extra)
            .arg(&pipeline)
            .arg("--var")
            .arg(format!("OUT={}", out.display()))
            .arg("--var")
            .arg(format!("IN={}", input.display()));
        cmd
    };

    // Step 3 fails: its input does not exist yet.
    run(&[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("[3/5]").and(predicate::str::contains("FAILED")))
        .stderr(predicate::str::contains("flowengine run --resume"));
    let sink_files = || std::fs::read_dir(out.join("sink")).unwrap().count();
    assert_eq!(sink_files(), 1, "step 2 committed one file");

    // Fix the cause, resume.
    std::fs::write(input.join("input.csv"), "id,v\n3,c\n4,d\n5,e\n").unwrap();
    run(&["--resume"])
        .assert()
        .success()
        // Only the INSERT is a write it skips; the CREATE before it is replayed.
        .stderr(predicate::str::contains(
            "1 committed write(s) will be skipped",
        ))
        .stderr(
            predicate::str::contains("[2/5]")
                .and(predicate::str::contains("skipped: committed by run")),
        )
        .stderr(predicate::str::contains("[4/5]").and(predicate::str::contains("3 rows written")));
    // Step 2 was not re-run (still one file from it, plus one from step 4); nothing duplicated.
    assert_eq!(sink_files(), 2);
    let count = std::fs::read_to_string(out.join("count.csv")).unwrap();
    assert_eq!(count.trim(), "n,ids\n5,5");

    // The runs are recorded: failed, then succeeded resuming it.
    let listing = flowengine()
        .env("FLOWENGINE_STATE_DIR", &state)
        .args(["runs", "--format", "csv"])
        .arg(&pipeline)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listing = String::from_utf8(listing).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(lines[1].contains(",failed,"), "{listing}");
    assert!(lines[2].contains(",succeeded,"), "{listing}");
    let first_id = lines[1].split(',').next().unwrap();
    assert!(
        lines[2].contains(first_id),
        "resumed_from names the failed run: {listing}"
    );

    // system.runs / system.steps are queryable from pipelines.
    let q = write_pipeline(
        dir.path(),
        "q.sql",
        "SELECT status, count(*) AS n FROM system.steps GROUP BY status ORDER BY status;",
    );
    flowengine()
        .env("FLOWENGINE_STATE_DIR", &state)
        .args(["run", "--format", "csv"])
        .arg(&q)
        .assert()
        .success()
        .stdout(predicate::str::contains("failed,1"))
        .stdout(predicate::str::contains("skipped,1"));

    // Nothing left to resume after a success.
    run(&["--resume"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing to resume"));
}

#[test]
fn resume_is_refused_when_the_pipeline_changed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pipeline = write_pipeline(
        dir.path(),
        "p.sql",
        "SELECT 1;\nSELECT * FROM missing_table;\n",
    );
    let run = |resume: bool| {
        let mut cmd = flowengine();
        cmd.env("FLOWENGINE_STATE_DIR", &state).arg("run");
        if resume {
            cmd.arg("--resume");
        }
        cmd.arg(&pipeline);
        cmd
    };
    run(true)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing to resume"));
    run(false).assert().code(1);
    std::fs::write(&pipeline, "SELECT 1;\nSELECT 2;\n").unwrap();
    run(true)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("changed since run"));
}

#[test]
fn secret_variables_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pipeline = write_pipeline(
        dir.path(),
        "p.sql",
        "SELECT '${DB_PASSWORD}' IS NOT NULL;\n",
    );
    flowengine()
        .env("FLOWENGINE_STATE_DIR", &state)
        .arg("run")
        .arg(&pipeline)
        .args(["--var", "DB_PASSWORD=hunter2", "--var", "REGION=eu"])
        .assert()
        .success();
    let journal = std::fs::read_to_string(state.join("state.jsonl")).unwrap();
    assert!(!journal.contains("hunter2"), "{journal}");
    assert!(journal.contains("\"REGION\":\"eu\""), "{journal}");
}

/// The same resume flow with the shared PostgreSQL store (the server on this machine).
#[test]
fn postgres_state_store_records_runs_and_resumes() {
    let url = std::env::var("FLOWENGINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    let pipeline = write_pipeline(dir.path(), "pg_load.sql", PIPELINE);
    let run = |extra: &[&str]| {
        let mut cmd = flowengine();
        cmd.env("FLOWENGINE_STATE_URL", &url)
            .arg("run")
            .args(extra)
            .arg(&pipeline)
            .arg("--var")
            .arg(format!("OUT={}", out.display()))
            .arg("--var")
            .arg(format!("IN={}", input.display()));
        cmd
    };
    run(&[]).assert().code(1);
    std::fs::write(input.join("input.csv"), "id,v\n3,c\n").unwrap();
    run(&["--resume"])
        .assert()
        .success()
        .stderr(predicate::str::contains("skipped: committed by run"));
    assert_eq!(
        std::fs::read_to_string(out.join("count.csv"))
            .unwrap()
            .trim(),
        "n,ids\n3,3"
    );
    let listing = flowengine()
        .env("FLOWENGINE_STATE_URL", &url)
        .args(["runs", "--format", "csv"])
        .arg(&pipeline)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listing = String::from_utf8(listing).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines[1].contains(",failed,") && lines[2].contains(",succeeded,"),
        "{listing}"
    );
    // A wrong URL is a clear error that does not print the password (a secret reference:
    // plain-text passwords in state_url are refused).
    flowengine()
        .env(
            "FLOWENGINE_STATE_URL",
            "postgresql://postgres:${secret:PG_PASS}@127.0.0.1:1/test",
        )
        .env("FLOWENGINE_SECRET_PG_PASS", "s3cret")
        .arg("runs")
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot connect"))
        .stderr(predicate::str::contains("s3cret").not());
}

/// Watermarks and quality results in the PostgreSQL store: an incremental load advances only
/// on success, checks are recorded, both visible as system tables.
#[test]
fn postgres_state_store_keeps_watermarks_and_quality_results() {
    let url = std::env::var("FLOWENGINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.csv"),
        "id,ts\n1,2024-01-01T00:00:00\n2,2024-01-02T00:00:00\n",
    )
    .unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        "pg_incremental.sql",
        &format!(
            "CREATE EXTERNAL TABLE src (id INT, ts TIMESTAMP) STORED AS CSV LOCATION '{}/';\n\
             CREATE EXTERNAL TABLE dst (id INT, ts TIMESTAMP) STORED AS PARQUET LOCATION '{}/';\n\
             CREATE INCREMENTAL VIEW fresh ON src BY ts;\n\
             CREATE CHECK ids_present ON fresh EXPECT id IS NOT NULL WARN;\n\
             INSERT INTO dst SELECT * FROM fresh;\n",
            input.display(),
            out.display()
        ),
    );
    let run = || {
        flowengine()
            .env("FLOWENGINE_STATE_URL", &url)
            .arg("run")
            .arg(&pipeline)
            .assert()
            .success()
            .get_output()
            .stderr
            .clone()
    };
    let first = String::from_utf8(run()).unwrap();
    assert!(first.contains("2 rows written"), "{first}");
    std::fs::write(input.join("b.csv"), "id,ts\n3,2024-01-03T00:00:00\n").unwrap();
    let second = String::from_utf8(run()).unwrap();
    assert!(
        second.contains("after 2024-01-02T00:00:00 up to 2024-01-03T00:00:00"),
        "{second}"
    );
    assert!(second.contains("1 rows written"), "{second}");
    let canonical = std::fs::canonicalize(&pipeline)
        .unwrap()
        .display()
        .to_string();
    let query = format!(
        "SELECT (SELECT value FROM system.watermarks WHERE pipeline = '{canonical}' AND committed ORDER BY recorded_at DESC LIMIT 1) AS mark, \
                (SELECT count(*) FROM system.quality_results WHERE pipeline = '{canonical}' AND status = 'passed') AS passed"
    );
    let o = flowengine()
        .env("FLOWENGINE_STATE_URL", &url)
        .args(["run", "--format", "csv"])
        .arg(write_pipeline(dir.path(), "q.sql", &format!("{query};\n")))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(o).unwrap(),
        "mark,passed\n2024-01-03T00:00:00,2\n"
    );
}
