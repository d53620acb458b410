//! Helpers of the message-queue tests: test messages (1% malformed), reading the ids back from
//! Parquet and dead-letter files, and `--follow` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{flowengine, psql, write_pipeline};

/// A name unique to this test process and moment.
pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// The payload of test message `id`: every 100th (`id % 100 == 7`) is malformed, alternately
/// cut short and of a wrong type. `None` for a good one's id list.
pub(crate) fn payload(id: u64) -> (String, bool) {
    if id % 100 == 7 {
        let bad = if id % 200 == 7 {
            format!("{{\"id\": {id}, \"name\": \"cut")
        } else {
            format!("{{\"id\": \"x{id}\", \"name\": \"bad\"}}")
        };
        (bad, false)
    } else {
        (
            format!(
                "{{\"id\": {id}, \"name\": \"n{id}\", \"pad\": \"{}\"}}",
                "p".repeat(150)
            ),
            true,
        )
    }
}

/// The ids of the good messages among `from..to`.
pub(crate) fn good_ids(from: u64, to: u64) -> Vec<u64> {
    (from..to).filter(|id| payload(*id).1).collect()
}

/// Every `id` in a Parquet file, sorted.
pub(crate) fn parquet_ids(path: &Path) -> Vec<u64> {
    parquet_ids_named(path, "id")
}

/// Every value of BIGINT column `column` in a Parquet file, sorted.
pub(crate) fn parquet_ids_named(path: &Path, column: &str) -> Vec<u64> {
    use arrow::array::{Array, Int64Array};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let col = b.column_by_name(column).unwrap();
        let a = col.as_any().downcast_ref::<Int64Array>().unwrap();
        ids.extend((0..a.len()).map(|i| a.value(i) as u64));
    }
    ids.sort_unstable();
    ids
}

/// Parquet files in `dir` whose name starts with `prefix`: all ids, sorted, duplicates kept.
pub(crate) fn all_ids(dir: &Path, prefix: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".parquet") {
            ids.extend(parquet_ids(&e.path()));
        }
    }
    ids.sort_unstable();
    ids
}

/// The distinct ids of the dead-lettered messages in a dead-letter file (read from their raw
/// text), and how many records it holds.
pub(crate) fn dead_ids(path: &Path) -> (std::collections::BTreeSet<u64>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids = std::collections::BTreeSet::new();
    let mut n = 0;
    for line in text.lines() {
        n += 1;
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{line}"
        );
        let raw = v["raw"].as_str().unwrap();
        let digits: String = raw
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        ids.insert(digits.parse().unwrap());
    }
    (ids, n)
}

/// `flowengine run --follow` of `pipeline`, its state under `state`; what it prints to stderr
/// is appended to [`follow_log`]`(state)`.
pub(crate) fn follow(pipeline: &Path, state: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(follow_log(state))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_flowengine"))
        .args(["run", "--follow", "--interval", "0.2"])
        .arg(pipeline)
        .env("FLOWENGINE_STATE_DIR", state)
        .env_remove("FLOWENGINE_CONFIG")
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// The stderr log of the `--follow` processes whose state is `state`.
pub(crate) fn follow_log(state: &Path) -> PathBuf {
    state.with_extension("stderr.log")
}

/// The last lines of [`follow_log`]`(state)`, for a failure message.
pub(crate) fn follow_log_tail(state: &Path) -> String {
    let text = std::fs::read_to_string(follow_log(state)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Ask a `--follow` process to stop after its micro-batch (SIGTERM); it must exit 0.
pub(crate) fn terminate(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Wait until `done` holds, failing after `secs` with `what`.
pub(crate) async fn wait_for(secs: u64, what: &str, done: impl FnMut() -> bool) {
    wait_for_follow(secs, what, None, done).await;
}

/// [`wait_for`] of a `--follow` process whose state is `state`: a timeout shows its log.
pub(crate) async fn wait_for_follow(
    secs: u64,
    what: &str,
    state: Option<&Path>,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {what}; the pipeline's stderr ended with:\n{}",
            state.map(follow_log_tail).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Only `batch_*.parquet` files in `dir`: no unfinished output looks complete.
pub(crate) fn assert_only_batches(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n.starts_with("batch_") && n.ends_with(".parquet"),
            "stray file {n}"
        );
    }
}

/// A directory with an `out/` folder for batches.
pub(crate) fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    (dir, out)
}

/// The `--follow` kill-and-restart run every consuming broker's test shares: `table` is the source's CREATE
/// statement (reading `dead`), `publish_more` adds 5,000 messages while it is down.
pub(crate) async fn follow_kill_restart(
    table: &str,
    dir: &std::path::Path,
    out: &std::path::Path,
    expected: Vec<u64>,
    publish_more: impl std::future::Future<Output = Vec<u64>>,
) {
    let pipeline = write_pipeline(
        dir,
        "live.sql",
        &format!(
            "{table}
             COPY (SELECT id, name FROM src) TO '{out}/batch_${{batch}}.parquet' STORED AS PARQUET;",
            out = out.display()
        ),
    );
    let state = dir.join("state");
    let first = follow(&pipeline, &state);
    wait_for_follow(180, "20,000 rows before the kill", Some(&state), || {
        all_ids(out, "batch_").len() >= 20_000
    })
    .await;
    let mut first = first;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = all_ids(out, "batch_").len();
    assert!(
        at_kill < expected.len(),
        "finished before the kill: {at_kill}"
    );
    let more = publish_more.await;
    let second = follow(&pipeline, &state);
    let mut want = expected;
    want.extend(more);
    wait_for_follow(
        240,
        "every valid message after the restart",
        Some(&state),
        || {
            let mut ids = all_ids(out, "batch_");
            ids.dedup();
            ids.len() >= want.len()
        },
    )
    .await;
    terminate(second);
    let mut ids = all_ids(out, "batch_");
    ids.dedup();
    assert_eq!(ids, want, "every valid message, nothing else");
    assert_only_batches(out);
}

/// Into PostgreSQL with an upsert key, a killed and restarted `--follow` pipeline holds each
/// message exactly once (redelivered messages overwrite their own rows). `source` creates table
/// `src` over 30,000 published messages (`expected` the valid ids).
pub(crate) async fn follow_into_postgres_exactly_once(source: &str, expected: &[u64]) {
    let table = format!("fe_queue_{}", unique());
    psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, redelivered boolean)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        "pg.sql",
        &format!(
            "{source}
             CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{table}'
               OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:5432/test', 'on_conflict' 'upsert:id');
             INSERT INTO dst SELECT id, name, _redelivered AS redelivered FROM src;"
        ),
    );
    let count = || {
        psql(&format!("SELECT count(*) FROM {table}"))
            .parse::<usize>()
            .unwrap()
    };
    let state = dir.path().join("state");
    let mut first = follow(&pipeline, &state);
    wait_for_follow(120, "6,000 rows before the kill", Some(&state), || {
        count() >= 6_000
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(count() < expected.len(), "finished before the kill");
    let second = follow(&pipeline, &state);
    wait_for_follow(180, "every row after the restart", Some(&state), || {
        count() >= expected.len()
    })
    .await;
    terminate(second);
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(id) FROM {table}"
        )),
        format!(
            "{n}|{n}|0|29999|{sum}",
            n = expected.len(),
            sum = expected.iter().sum::<u64>()
        )
    );
    psql(&format!("DROP TABLE {table}"));
}

/// `flowengine sql -c statements` with CSV output.
pub(crate) fn sql(statements: &str) -> std::process::Output {
    flowengine()
        .args(["sql", "--format", "csv", "-c", statements])
        .output()
        .unwrap()
}

/// The standard output of a command that must have succeeded (its stderr shown otherwise).
pub(crate) fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
