//! End-to-end tests of the `flowengine` binary: examples, run options, the `sql` command and
//! its shell, configuration and memory limits. Failures and bad input: `cli_errors.rs`.

mod common;

use std::path::PathBuf;

use common::*;
use predicates::prelude::*;

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
        // Examples that need a server this test cannot start are run by the test named here.
        if let Some(runner) = text.strip_prefix("-- Run by: ") {
            let file = runner.split_whitespace().next().unwrap_or("");
            assert!(
                repo(file).exists(),
                "{}: no test file {file}",
                example.display()
            );
            continue;
        }
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

/// The README's "Run, query, serve" steps, as a newcomer types them: its pipeline block is
/// `sql-examples/incremental_orders.sql`, its `run` and `sql` lines work as written (from a
/// directory holding the repository's `sql-examples`), and a second run reads nothing new.
#[test]
fn readme_run_and_sql_steps_run_as_written() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split("\n## Run, query, serve\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Run, query, serve section");
    let block = |fence: &str| -> String {
        let start = section
            .find(fence)
            .unwrap_or_else(|| panic!("no {fence} block"));
        let body = &section[start + fence.len()..];
        body[..body.find("```").unwrap()].to_string()
    };
    let example = std::fs::read_to_string(repo("sql-examples/incremental_orders.sql")).unwrap();
    let statements: String = example
        .lines()
        .skip_while(|l| l.starts_with("-- "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(block("```sql\n"), statements, "README and example differ");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo("sql-examples"), dir.path().join("sql-examples")).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(
        assert_cmd::cargo::cargo_bin("flowengine"),
        bin.join("flowengine"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |line: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", line])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("FLOWENGINE_CONFIG")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "{line}\n{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let commands = block("```sh\n");
    let line = |prefix: &str| {
        commands
            .lines()
            .find(|l| l.starts_with(prefix) && !l.contains("--follow"))
            .unwrap_or_else(|| panic!("no `{prefix}` line"))
            .split("  #")
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let run = line("flowengine run ");
    let (stdout, stderr) = shell(&run);
    assert!(
        stderr.contains("positive_quantity on orders passed"),
        "{stderr}"
    );
    assert!(stdout.contains("| paid "), "{stdout}");
    let written = |stderr: &str| -> String {
        stderr
            .lines()
            .find(|l| l.contains("COPY"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(written(&stderr).contains("rows written"), "{stderr}");
    assert!(!written(&stderr).contains(" 0 rows written"), "{stderr}");
    assert!(
        tree(&dir.path().join("out/paid"))
            .iter()
            .any(|f| f.ends_with(".parquet"))
    );
    // The incremental view committed its watermark: nothing new the second time.
    let (_, stderr) = shell(&run);
    assert!(written(&stderr).contains(" 0 rows written"), "{stderr}");
    let (stdout, _) = shell(&line("flowengine sql "));
    assert!(
        stdout.contains("order_id") && stdout.contains("| 1 "),
        "{stdout}"
    );
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

/// `flowengine sql --format csv -c SQL`: what it printed, after asserting success.
fn sql_csv(sql: &str) -> String {
    let out = flowengine()
        .args(["sql", "--format", "csv", "-c", sql])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn local_commands_read_files_as_tables() {
    assert_eq!(
        sql_csv("SELECT count(*) AS n FROM 'sql-examples/data/orders.csv'"),
        "n\n1000\n"
    );
    assert_eq!(
        sql_csv(
            "SELECT count(*) AS n, max(status) AS s \
             FROM read_csv('sql-examples/data/orders.csv', {'has_header': true}) WHERE quantity > 0"
        ),
        "n,s\n1000,shipped\n"
    );
    // Options as pairs, a clear error for a file that is not there.
    assert_eq!(
        sql_csv(
            "SELECT count(*) AS n FROM read_csv('sql-examples/data/orders.csv', 'has_header', false)"
        ),
        "n\n1001\n"
    );
    flowengine()
        .args(["sql", "-c", "SELECT * FROM read_parquet('no/such/dir/')"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("read_parquet('no/such/dir/')"));
}

#[test]
fn sql_command_and_stdin() {
    assert_eq!(sql_csv("SELECT 1 AS x; SELECT 2 AS y"), "x\n1\ny\n2\n");
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

#[test]
fn profile_reports_every_column_of_a_file_table_or_query() {
    let out = flowengine()
        .args([
            "profile",
            "sql-examples/data/orders.csv",
            "--format",
            "csv",
            "--top",
            "2",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let status = text
        .lines()
        .find(|l| l.starts_with("status,"))
        .expect(&text);
    assert!(
        status.starts_with("status,Utf8,1000,0,0.0,4,cancelled,shipped,"),
        "{status}"
    );
    assert!(status.contains("paid (556), shipped (332)"), "{status}");
    // The distinct estimate never exceeds the values counted; means are rounded.
    let id = text
        .lines()
        .find(|l| l.starts_with("order_id,"))
        .expect(&text);
    assert!(
        id.starts_with("order_id,Int64,1000,0,0.0,1000,1,1000,500.5,288.819436,"),
        "{id}"
    );
    let quantity = text
        .lines()
        .find(|l| l.starts_with("quantity,"))
        .expect(&text);
    assert!(
        quantity.contains("in 10 bins: 193 0 194 0 0 195 0 200 0 218"),
        "{quantity}"
    );
    // A query, with NULLs, as JSON.
    flowengine()
        .args([
            "profile",
            "SELECT * FROM (VALUES (1, 'a'), (NULL, 'bb'), (3, NULL), (NULL, NULL)) AS t(x, s)",
            "--format",
            "json",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"column\":\"x\""))
        .stdout(predicate::str::contains("\"nulls\":2"))
        .stdout(predicate::str::contains("\"null_pct\":50.0"))
        .stdout(predicate::str::contains("\"length\":\"1..2\""));
    // An unknown table is a clear error.
    flowengine()
        .args(["profile", "no_such_table"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no_such_table"));
}
