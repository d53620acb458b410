//! End-to-end tests of the `flowengine` binary: pipelines, variables, dry runs, output files,
//! configuration, exit codes, the bad-input corpus and atomic sinks.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn flowengine() -> Command {
    let mut cmd = Command::cargo_bin("flowengine").expect("binary built");
    // Tests must not pick up a developer's flowengine.toml or FLOWENGINE_* settings.
    cmd.env_remove("FLOWENGINE_CONFIG");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bad(p: &str) -> PathBuf {
    repo("tests/bad_inputs").join(p)
}

fn write_pipeline(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p
}

/// Files below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn parquet_rows(path: &Path) -> i64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).unwrap();
    SerializedFileReader::new(f)
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows()
}

/// Run `sql-examples/NAME.sql` with `OUT_DIR=out`; returns (stdout, stderr).
fn run_example(name: &str, format: &str, out: &Path) -> (String, String) {
    let assert = flowengine()
        .args([
            "run",
            &format!("sql-examples/{name}.sql"),
            "--format",
            format,
            "--var",
        ])
        .arg(format!("OUT_DIR={}", out.display()))
        .assert()
        .success();
    let o = assert.get_output();
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

// ---------------------------------------------------------------- examples

#[test]
fn quickstart_writes_parquet_and_prints_summary() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_example("quickstart", "table", out.path());
    // One summary line per statement.
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with('[')).count(),
        6,
        "{stderr}"
    );
    assert!(stderr.contains("COPY"), "{stderr}");
    // Expected rows: orders that are not cancelled (computed independently from the CSV).
    let csv = std::fs::read_to_string(repo("sql-examples/data/orders.csv")).unwrap();
    let expected = csv
        .lines()
        .skip(1)
        .filter(|l| !l.ends_with(",cancelled"))
        .count();
    assert!(
        stderr.contains(&format!("{expected} rows written")),
        "{stderr}"
    );
    let parquet = out.path().join("quickstart/order_facts.parquet");
    assert_eq!(parquet_rows(&parquet), expected as i64);
    // The summary table lists every country and sums to the expected order count.
    let total: usize = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("country"))
        .map(|l| {
            l.split('|')
                .nth(2)
                .unwrap()
                .trim()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, expected, "{stdout}");
    assert!(stdout.contains("| DE "), "{stdout}");
    // No staging leftovers.
    assert!(tree(out.path()).iter().all(|f| !f.contains(".flowengine-")));
}

#[test]
fn every_example_runs() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo("sql-examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "{examples:?}");
    for example in examples {
        let text = std::fs::read_to_string(&example).unwrap();
        assert!(
            text.starts_with("-- "),
            "{} must start with a comment saying what it shows",
            example.display()
        );
        let out = tempfile::tempdir().unwrap();
        flowengine()
            .arg("run")
            .arg(&example)
            .arg("--var")
            .arg(format!("OUT_DIR={}", out.path().display()))
            .assert()
            .success();
    }
}

#[test]
fn partitioned_example_writes_hive_directories() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, _) = run_example("partitioned_parquet", "csv", out.path());
    let files = tree(&out.path().join("orders_by_month"));
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("order_month=2024-03/status=paid/") && f.ends_with(".parquet")),
        "{files:?}"
    );
    assert!(
        files.iter().all(|f| f.starts_with("order_month=2024-")),
        "{files:?}"
    );
    let total: i64 = files
        .iter()
        .map(|f| parquet_rows(&out.path().join("orders_by_month").join(f)))
        .sum();
    assert_eq!(total, 1000);
    assert!(
        stdout.starts_with("order_month,status,orders,items\n"),
        "{stdout}"
    );
    assert!(
        stdout.lines().skip(1).all(|l| l.starts_with("2024-03,")),
        "{stdout}"
    );
}

#[test]
fn cleanup_example_accounts_for_every_row() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, _) = run_example("csv_cleanup", "json", out.path());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let input = v["input_rows"].as_i64().unwrap();
    let clean = v["clean_rows"].as_i64().unwrap();
    assert_eq!(input, 300);
    let tsv = std::fs::read_to_string(out.path().join("cleanup/events_clean.tsv")).unwrap();
    assert!(
        tsv.lines().next().unwrap().contains("event_id\tuser_email"),
        "{tsv}"
    );
    assert_eq!(tsv.lines().count() as i64 - 1, clean);
    let rejected = std::fs::read_to_string(out.path().join("cleanup/events_rejected.csv")).unwrap();
    assert_eq!(rejected.lines().count() as i64 - 1, input - clean);
    assert!(input - clean > 0);
}

// ---------------------------------------------------------------- run options

#[test]
fn dry_run_plans_without_writing() {
    let out = tempfile::tempdir().unwrap();
    flowengine()
        .args(["run", "sql-examples/csv_cleanup.sql", "--dry-run", "--var"])
        .arg(format!("OUT_DIR={}", out.path().display()))
        .assert()
        .success()
        .stderr(predicate::str::contains("planned (dry run)"));
    assert!(tree(out.path()).is_empty(), "{:?}", tree(out.path()));

    // A pipeline that reads back what it wrote still plans: the skipped write's schema is used.
    for example in ["quickstart", "partitioned_parquet"] {
        flowengine()
            .args([
                "run",
                &format!("sql-examples/{example}.sql"),
                "--dry-run",
                "--explain",
                "--var",
            ])
            .arg(format!("OUT_DIR={}", out.path().display()))
            .assert()
            .success()
            .stdout(predicate::str::contains("physical plan:"))
            .stderr(predicate::str::contains("planned (dry run)"));
    }
    assert!(tree(out.path()).is_empty(), "{:?}", tree(out.path()));
}

#[test]
fn explain_prints_plans() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "e.sql",
        "CREATE VIEW v AS SELECT 1 AS a;\nSELECT a + 1 FROM v;\n",
    );
    flowengine()
        .arg("run")
        .arg(&p)
        .arg("--explain")
        .assert()
        .success()
        .stdout(predicate::str::contains("logical plan:"))
        .stdout(predicate::str::contains("physical plan:"));
}

#[test]
fn variables_come_from_flags_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "v.sql",
        "-- ${UNUSED_IN_COMMENT}\nSELECT '${A}' AS a, '${B}' AS b, '${C:-fallback}' AS c, '$${A}' AS literal;\n",
    );
    flowengine()
        .arg("run")
        .arg(&p)
        .args(["--var", "A=from-flag", "--format", "csv"])
        .env("A", "from-env")
        .env("B", "env-b")
        .assert()
        .success()
        .stdout("a,b,c,literal\nfrom-flag,env-b,fallback,${A}\n");
}

#[test]
fn output_file_formats() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "o.sql",
        "SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, NULL)) AS t(id, name);\n",
    );
    for ext in ["csv", "json", "parquet"] {
        let target = dir.path().join(format!("result.{ext}"));
        flowengine()
            .arg("run")
            .arg(&p)
            .arg("--output")
            .arg(&target)
            .assert()
            .success()
            .stdout("")
            .stderr(predicate::str::contains("3 rows written"));
        assert!(target.is_file(), "{ext}");
    }
    let csv = std::fs::read_to_string(dir.path().join("result.csv")).unwrap();
    assert_eq!(csv, "id,name\n1,a\n2,b\n3,\n");
    assert_eq!(parquet_rows(&dir.path().join("result.parquet")), 3);
    let json = std::fs::read_to_string(dir.path().join("result.json")).unwrap();
    assert_eq!(json.lines().count(), 3, "{json}");
    flowengine()
        .arg("run")
        .arg(&p)
        .arg("--output")
        .arg(dir.path().join("result.xlsx"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot tell the output format"));
}

#[test]
fn quiet_and_table_row_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "q.sql",
        "SELECT * FROM generate_series(1, 500) AS t(n);\n",
    );
    flowengine()
        .arg("run")
        .arg(&p)
        .args(["--quiet", "--max-rows", "5"])
        .assert()
        .success()
        .stderr("")
        .stdout(predicate::str::contains("(500 rows, showing the first 5"));
}

// ---------------------------------------------------------------- sql subcommand

#[test]
fn sql_command_and_stdin() {
    flowengine()
        .args([
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT 1 AS x; SELECT 2 AS y",
        ])
        .assert()
        .success()
        .stdout("x\n1\ny\n2\n");
    flowengine()
        .args(["sql", "--format", "json"])
        .write_stdin("CREATE VIEW v AS SELECT 42 AS answer;\nSELECT * FROM v;\n")
        .assert()
        .success()
        .stdout("{\"answer\":42}\n");
    flowengine()
        .args([
            "sql",
            "--init",
            "sql-examples/quickstart.sql",
            "--format",
            "csv",
            "--var",
        ])
        .arg(format!(
            "OUT_DIR={}",
            tempfile::tempdir().unwrap().path().display()
        ))
        .args(["-c", "SELECT count(*) AS n FROM customers"])
        .assert()
        .success()
        .stdout("n\n60\n");
}

/// On a terminal `sql` is an interactive shell (rustyline): run it under a pseudo-terminal.
#[test]
fn interactive_shell_on_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("flowengine");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("{} sql", bin.display()), "/dev/null"])
        .env("HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            // One line at a time, as a person types: the line editor discards input typed ahead
            // of its prompt when it switches the terminal mode.
            for line in [
                "CREATE VIEW v AS",
                "SELECT 41 + 1 AS answer;",
                "SELECT * FROM v;",
                "SELECT nope;",
                "\\q",
            ] {
                std::thread::sleep(std::time::Duration::from_millis(400));
                stdin.write_all(line.as_bytes())?;
                stdin.write_all(b"\n")?;
                stdin.flush()?;
            }
            drop(stdin);
            child.wait_with_output()
        })
        .expect("`script` (util-linux) runs the shell under a pty");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("flowengine> "), "{text}");
    assert!(text.contains("| 42     |"), "{text}");
    assert!(
        text.contains("No field named nope"),
        "errors are shown and the shell goes on: {text}"
    );
    let history = std::fs::read_to_string(home.path().join(".flowengine_history")).unwrap();
    assert!(history.contains("SELECT * FROM v;"), "{history}");
}

// ---------------------------------------------------------------- configuration

#[test]
fn config_check_shows_effective_values_and_rejects_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "memory_limit = \"1GiB\"\nbatch_size = 4096\n[datafusion]\n\"datafusion.execution.parquet.compression\" = \"snappy\"\n").unwrap();
    flowengine()
        .args(["config", "check", "--config"])
        .arg(&good)
        .env("FLOWENGINE_TARGET_PARTITIONS", "3")
        .assert()
        .success()
        .stdout(predicate::str::contains("memory_limit = \"1.0 GiB\""))
        .stdout(predicate::str::contains("target_partitions = 3"))
        .stdout(predicate::str::contains("batch_size = 4096"))
        .stdout(predicate::str::contains(
            "overridden by environment: FLOWENGINE_TARGET_PARTITIONS",
        ));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "batch_size = 10\nmemory_limt = \"1GiB\"\n").unwrap();
    flowengine()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("memory_limt"))
        .stderr(predicate::str::contains("bad.toml"));

    std::fs::write(
        &bad,
        "[datafusion]\n\"datafusion.execution.no_such_thing\" = \"1\"\n",
    )
    .unwrap();
    flowengine()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "datafusion.execution.no_such_thing",
        ));

    flowengine()
        .args(["config", "check"])
        .env("FLOWENGINE_BATCH_SIZE", "lots")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("FLOWENGINE_BATCH_SIZE"));
}

#[test]
fn config_settings_apply_to_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "batch_size = 1234\ntarget_partitions = 3\n").unwrap();
    flowengine()
        .args(["sql", "--format", "csv", "--config"])
        .arg(&cfg)
        .args(["-c", "SELECT name, value FROM information_schema.df_settings WHERE name IN ('datafusion.execution.batch_size', 'datafusion.execution.target_partitions') ORDER BY name"])
        .assert()
        .success()
        .stdout("name,value\ndatafusion.execution.batch_size,1234\ndatafusion.execution.target_partitions,3\n");
}

/// The configured memory limit bounds the DataFusion memory pool: a sort far larger than the
/// limit spills to `spill_dir` and completes; an aggregate that cannot spill fails cleanly.
#[test]
fn memory_limit_spills_or_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mem.toml");
    std::fs::write(
        &cfg,
        format!(
            "memory_limit = \"16MiB\"\nspill_dir = \"{}\"\n",
            dir.path().join("spill").display()
        ),
    )
    .unwrap();
    // 4M rows (32 MB of values) sorted under a 16 MiB pool: only possible by spilling.
    let sorted = dir.path().join("sorted.csv");
    flowengine()
        .args(["sql", "--config"])
        .arg(&cfg)
        .arg("-c")
        .arg(format!(
            "COPY (SELECT value AS v FROM generate_series(1, 4000000) ORDER BY random()) TO '{}'",
            sorted.display()
        ))
        .assert()
        .success();
    let text = std::fs::read_to_string(&sorted).unwrap();
    assert_eq!(text.lines().count(), 4_000_001);
    flowengine()
        .args(["sql", "--config"])
        .arg(&cfg)
        .args([
            "-c",
            "SELECT array_length(array_agg(value)) FROM generate_series(1, 8000000)",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Resources exhausted"))
        .stderr(predicate::str::contains("pool_size: 16.0 MB"));
}

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
            vec!["invalid_utf8.sql:2:1", "not valid UTF-8"],
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
}

// ---------------------------------------------------------------- atomic sinks

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
    let p = write_pipeline(dir.path(), "single.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .env("FLOWENGINE_BATCH_SIZE", "1024")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not-a-number"));
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
    let p = write_pipeline(dir.path(), "parts.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .env("FLOWENGINE_BATCH_SIZE", "1024")
        .assert()
        .code(1);
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
    let p = write_pipeline(dir.path(), "insert.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .env("FLOWENGINE_BATCH_SIZE", "1024")
        .assert()
        .code(1);
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

/// arrow-csv accepts a quote left open at the end of a file and yields rows instead of an error
/// (DuckDB's reader is lenient there too). Rejecting it needs FlowEngine's own tolerant CSV
/// reader with error policies, which the reliability work brings; until then this documents the
/// expected behaviour.
#[test]
#[ignore = "needs the tolerant CSV reader (error policies) to detect an unterminated quote"]
fn unterminated_quote_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}';\nSELECT * FROM t;",
        bad("unterminated_quote.csv").display()
    );
    let p = write_pipeline(dir.path(), "uq.sql", &sql);
    flowengine()
        .arg("run")
        .arg(&p)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unterminated"));
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
