//! End-to-end tests of failures: exit codes, located errors, the bad-input corpus, atomic sinks
//! (no partial outputs) and interruption.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use predicates::prelude::*;

// ---------------------------------------------------------------- exit codes and errors

#[test]
fn usage_errors_exit_2() {
    flowengine().args(["run"]).assert().code(2);
    flowengine().args(["frobnicate"]).assert().code(2);
    flowengine()
        .args(["run", "sql-examples/quickstart.sql", "--var", "no-equals"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("NAME=VALUE"));
    flowengine()
        .args(["run", "does/not/exist.sql"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does/not/exist.sql"));
    flowengine()
        .arg("run")
        .arg(bad("empty.sql"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no SQL statements"));
}

#[test]
fn failing_statement_is_located_and_stops_the_pipeline() {
    let assert = flowengine()
        .arg("run")
        .arg(bad("third_of_five.sql"))
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains("third_of_five.sql:4:1: statement 3 (QUERY) failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[3/5]") && stderr.contains("FAILED"),
        "{stderr}"
    );
    assert!(stderr.contains("no_such_column"), "{stderr}");
    assert!(
        stderr.contains("[2/5]") && !stderr.contains("[4/5]"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Each bad input gives exit code 1, a message naming where and why, and never a panic.
#[test]
fn bad_input_corpus_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = |p: &str| bad(p).display().to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        // ragged rows: caught while inferring the schema, with the file and line
        (
            format!(
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
                b("ragged.csv")
            ),
            vec![
                "statement 1 (CREATE EXTERNAL TABLE)",
                "ragged.csv",
                "line 3",
            ],
        ),
        // ... or while reading, when the schema is declared
        (
            format!(
                "CREATE EXTERNAL TABLE t (id INT, name VARCHAR, amount INT) STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
                b("ragged.csv")
            ),
            vec![
                "case1.sql:2:1: statement 2 (QUERY)",
                "line 3",
                "expected 3 got 2",
            ],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
                b("invalid_utf8.csv")
            ),
            vec!["invalid_utf8.csv", "utf-8", "line 3"],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
                b("empty.csv")
            ),
            vec!["statement 1", "no columns could be inferred", "empty.csv"],
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/definitely/missing/file.csv';".into(),
            vec![
                "/definitely/missing/file.csv",
                "statement 1 (CREATE EXTERNAL TABLE)",
                "no files found",
            ],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t (id INT, amount INT) STORED AS CSV LOCATION '{}';\nSELECT sum(amount) FROM t;",
                b("wrong_types.csv")
            ),
            vec!["statement 2 (QUERY)", "'abc'", "int32", "line 2"],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t (id INT, day DATE) STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
                b("bad_date.csv")
            ),
            vec!["statement 2", "2024-13-45", "date32"],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}';\nSELECT * FROM t;",
                b("corrupt.parquet")
            ),
            vec!["case7.sql:1:1: statement 1"],
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE t (id INT, name VARCHAR) STORED AS JSON LOCATION '{}';\nSELECT * FROM t;",
                b("truncated.json")
            ),
            vec!["statement 2", "json error", "truncated record"],
        ),
    ];
    for (i, (sql, expected)) in cases.iter().enumerate() {
        let p = write_pipeline(dir.path(), &format!("case{i}.sql"), sql);
        let assert = flowengine().arg("run").arg(&p).assert().code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_lowercase();
        assert!(
            stderr.contains(&format!("case{i}.sql:")),
            "case {i}: no location\n{stderr}"
        );
        for e in expected {
            assert!(
                stderr.contains(&e.to_lowercase()),
                "case {i}: expected `{e}` in\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "case {i} panicked\n{stderr}");
    }

    // Pipeline-level bad input.
    let pipeline_cases = [
        (
            "syntax_error.sql",
            vec!["syntax_error.sql:3:1", "SELEC", "Line: 3, Column: 1"],
        ),
        (
            "undefined_var.sql",
            vec!["undefined_var.sql:2:16", "NOT_DEFINED_ANYWHERE", "--var"],
        ),
        (
            "unterminated_string.sql",
            vec!["unterminated_string.sql:2:8", "Unterminated string"],
        ),
        (
            "invalid_utf8.sql",
            vec![
                "invalid_utf8.sql:2:9",
                "SQL text is not valid UTF-8 (byte 0xFF)",
            ],
        ),
    ];
    for (file, expected) in pipeline_cases {
        let assert = flowengine().arg("run").arg(bad(file)).assert().code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        for e in expected {
            assert!(stderr.contains(e), "{file}: expected `{e}` in\n{stderr}");
        }
        assert!(!stderr.contains("panicked"), "{file}\n{stderr}");
    }
    // The same file through `flowengine sql`'s stdin is located the same way.
    let text = std::fs::read(bad("invalid_utf8.sql")).unwrap();
    let assert = flowengine().arg("sql").write_stdin(text).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains("<stdin>:2:9: SQL text is not valid UTF-8 (byte 0xFF)"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- atomic sinks

/// Run `sql` as a pipeline in small batches (so output is written before the failure) and
/// expect it to fail.
fn run_failing(dir: &Path, name: &str, sql: &str) -> assert_cmd::assert::Assert {
    let p = write_pipeline(dir, name, sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .env("FLOWENGINE_BATCH_SIZE", "1024")
        .assert()
        .code(1)
}

/// A CSV whose last row cannot be cast: the failure comes after earlier batches were written.
fn late_failing_csv(dir: &Path) -> PathBuf {
    let mut text = String::from("id,value\n");
    for i in 0..200_000 {
        text.push_str(&format!("{i},{}\n", i % 97));
    }
    text.push_str("200000,not-a-number\n");
    let p = dir.join("late_failure.csv");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn failed_copy_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = late_failing_csv(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("existing.txt"), "keep me").unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT, value VARCHAR) STORED AS CSV LOCATION '{input}';\n\
         COPY (SELECT id, CAST(value AS INT) AS v FROM src) TO '{out}/single.csv';\n",
        input = input.display(),
        out = out.display()
    );
    run_failing(dir.path(), "single.sql", &sql).stderr(predicate::str::contains("not-a-number"));
    assert_eq!(
        tree(&out),
        vec!["existing.txt".to_string()],
        "single-file sink left files"
    );

    // Partitioned directory output: nothing may appear, not even empty partition directories.
    let sql = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT, value VARCHAR) STORED AS CSV LOCATION '{input}';\n\
         COPY (SELECT id % 4 AS part, id, CAST(value AS INT) AS v FROM src) TO '{out}/parts/' STORED AS PARQUET PARTITIONED BY (part);\n",
        input = input.display(),
        out = out.display()
    );
    run_failing(dir.path(), "parts.sql", &sql);
    assert_eq!(
        tree(&out),
        vec!["existing.txt".to_string()],
        "partitioned sink left files"
    );
    assert!(!out.join("parts").exists());

    // INSERT INTO an external table: the table keeps exactly its old contents.
    let table = dir.path().join("table");
    std::fs::create_dir(&table).unwrap();
    std::fs::write(table.join("old.csv"), "id,v\n1,1\n").unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT, value VARCHAR) STORED AS CSV LOCATION '{input}';\n\
         CREATE EXTERNAL TABLE dst (id BIGINT, v INT) STORED AS CSV LOCATION '{table}/';\n\
         INSERT INTO dst SELECT id, CAST(value AS INT) FROM src;\n",
        input = input.display(),
        table = table.display()
    );
    run_failing(dir.path(), "insert.sql", &sql);
    assert_eq!(tree(&table), vec!["old.csv".to_string()]);

    // The same statements succeed once the bad row is gone, replacing the file atomically.
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "id,value\n1,10\n2,20\n").unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT, value VARCHAR) STORED AS CSV LOCATION '{good}';\n\
         CREATE EXTERNAL TABLE dst (id BIGINT, v INT) STORED AS CSV LOCATION '{table}/';\n\
         INSERT INTO dst SELECT id, CAST(value AS INT) FROM src;\n\
         SELECT count(*) AS n FROM dst;\n",
        good = good.display(),
        table = table.display()
    );
    let p = write_pipeline(dir.path(), "insert_ok.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .args(["--format", "csv"])
        .assert()
        .success()
        .stdout("n\n3\n");
    assert!(
        tree(&table).iter().all(|f| !f.contains(".flowengine-")),
        "{:?}",
        tree(&table)
    );
}

/// A quote left open at the end of a file: DataFusion's reader (arrow-csv, the default, kept for
/// speed) accepts it, as DuckDB's does; FlowEngine's reader (`on_error` set) rejects it with the
/// file and line.
#[test]
fn unterminated_quote_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}' OPTIONS ('on_error' 'fail');\nSELECT * FROM t;",
        bad("unterminated_quote.csv").display()
    );
    let p = write_pipeline(dir.path(), "uq.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unterminated quoted field"))
        .stderr(predicate::str::contains("unterminated_quote.csv:"));
}

/// Ctrl-C cancels the running statement; its staged output is deleted, nothing is committed.
#[test]
fn interrupt_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let p = write_pipeline(
        dir.path(),
        "long.sql",
        &format!(
            "COPY (SELECT value, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 200000000)) TO '{}/big.csv';\n",
            out.display()
        ),
    );
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("flowengine"))
        .arg("run")
        .arg(&p)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement is writing (its staging file exists), then interrupt.
    let started = std::time::Instant::now();
    while tree(&out).is_empty() && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!tree(&out).is_empty(), "the COPY never started writing");
    assert!(
        tree(&out).iter().all(|f| f.contains(".flowengine-")),
        "{:?}",
        tree(&out)
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted"));
    assert!(tree(&out).is_empty(), "left behind: {:?}", tree(&out));
    assert!(
        !out.exists(),
        "the directory the statement created is removed too"
    );
}
