//! Tolerant readers end to end: `on_error` fail / skip / dead_letter on CSV and JSON files with
//! every kind of bad record mixed into large valid files, read in parallel byte ranges. Good +
//! bad must equal the input, and every bad record must be reported once with its file, line,
//! offset, raw text and reason.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// A deterministic generator (no external randomness: failures must reproduce).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Bad CSV lines of every kind, for the schema (id BIGINT NOT NULL, name, day DATE, amount DOUBLE).
fn bad_csv_line(kind: u64, id: u64) -> Vec<u8> {
    match kind % 7 {
        0 => format!("{id},ragged,2024-01-01").into_bytes(),
        1 => format!("{id},extra,2024-01-01,1.5,surplus").into_bytes(),
        2 => format!("{id},number,2024-01-01,12x").into_bytes(),
        3 => format!("{id},date,2024-02-30,1.5").into_bytes(),
        4 => {
            let mut v = format!("{id},").into_bytes();
            v.extend_from_slice(b"bad\xff\xfeutf8");
            v.extend_from_slice(b",2024-01-01,1.5");
            v
        }
        5 => format!("{id},\"broken quote,2024-01-01,1.5").into_bytes(),
        _ => ",missing id,2024-01-01,1.5".to_string().into_bytes(),
    }
}

/// Writes `files` CSV files of `rows` data lines each under `dir`; returns the expected good row
/// count and the (file name, line, raw) of every bad line.
fn write_csv_files(dir: &Path, files: usize, rows: u64) -> (u64, BTreeSet<(String, u64, Vec<u8>)>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg(42);
    let mut good = 0;
    let mut bad = BTreeSet::new();
    for f in 0..files {
        let name = format!("part-{f}.csv");
        let mut text = b"id,name,day,amount\n".to_vec();
        for r in 0..rows {
            let line = r + 2;
            let id = f as u64 * rows + r;
            if rng.next().is_multiple_of(500) {
                let raw = bad_csv_line(rng.next(), id);
                text.extend_from_slice(&raw);
                bad.insert((name.clone(), line, raw));
            } else {
                let quoted = if id.is_multiple_of(11) {
                    "\"with, comma\""
                } else {
                    "plain"
                };
                text.extend_from_slice(
                    format!(
                        "{id},{quoted},2024-{:02}-{:02},{}.25\n",
                        id % 12 + 1,
                        id % 28 + 1,
                        id % 1000
                    )
                    .as_bytes(),
                );
                good += 1;
                continue;
            }
            text.push(b'\n');
        }
        std::fs::write(dir.join(&name), text).unwrap();
    }
    (good, bad)
}

const PARALLEL: &str = "SET datafusion.execution.target_partitions = 4;\n\
SET datafusion.optimizer.repartition_file_min_size = 4096;\n";

#[test]
fn csv_dead_letters_account_for_every_bad_record_across_byte_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("in");
    let (good, bad) = write_csv_files(&data, 3, 40_000);
    assert!(bad.len() > 150, "the generator should produce bad rows");
    let dl = tmp.path().join("dl/bad.jsonl");
    let out = tmp.path().join("good.parquet");
    let sql = format!(
        "{PARALLEL}CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR, day DATE, amount DOUBLE) \
         STORED AS CSV LOCATION '{}/' OPTIONS ('on_error' 'dead_letter', 'dead_letter_path' '{}', 'dead_letter_table' 'bad_rows');\n\
         COPY (SELECT * FROM src) TO '{}';\n\
         SELECT (SELECT count(*) FROM src) AS good, (SELECT count(*) FROM bad_rows) AS bad, \
                (SELECT count(DISTINCT id) FROM src) AS ids;\n",
        data.display(),
        dl.display(),
        out.display()
    );
    let p = write_pipeline(tmp.path(), "p.sql", &sql);
    let (ok, stdout, stderr) = run_csv(&p);
    assert!(ok, "{stderr}");
    // Good + bad = input, and the second scan of the table added no duplicate dead letters.
    assert_eq!(parquet_rows(&out), good as i64);
    assert_eq!(
        stdout.lines().nth(1),
        Some(format!("{good},{},{good}", bad.len()).as_str()),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "{} bad records dead-lettered to {}",
            bad.len(),
            dl.display()
        )),
        "{stderr}"
    );
    // Every bad line is in the dead-letter file once, with its file, line, offset and raw text.
    let text = std::fs::read_to_string(&dl).unwrap();
    let mut seen = BTreeSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let file = v["file"].as_str().unwrap();
        let name = Path::new(file)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let line = v["line"].as_u64().unwrap();
        let offset = v["offset"].as_u64().unwrap() as usize;
        let reason = v["reason"].as_str().unwrap();
        assert!(!reason.is_empty());
        let content = std::fs::read(file).unwrap();
        let raw = &content[offset..];
        let raw = &raw[..raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len())];
        // The offset points at the line the line number names.
        assert_eq!(
            content[..offset].iter().filter(|&&b| b == b'\n').count() as u64 + 1,
            line,
            "{l}"
        );
        assert_eq!(
            v["raw"].as_str().unwrap(),
            String::from_utf8_lossy(raw),
            "{l}"
        );
        assert!(
            seen.insert((name, line, raw.to_vec())),
            "duplicate dead letter {l}"
        );
    }
    assert_eq!(seen, bad);
}

#[test]
fn csv_skip_counts_and_fail_names_file_line_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("in");
    let (good, bad) = write_csv_files(&data, 2, 20_000);
    let table = |opts: &str| {
        format!(
            "{PARALLEL}CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR, day DATE, amount DOUBLE) \
             STORED AS CSV LOCATION '{}/' OPTIONS ({opts});\nSELECT count(*) FROM src;\n",
            data.display()
        )
    };
    let p = write_pipeline(tmp.path(), "skip.sql", &table("'on_error' 'skip'"));
    let o = flowengine()
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().nth(1),
        Some(good.to_string().as_str())
    );
    assert!(
        stderr.contains(&format!("{} bad records skipped", bad.len())),
        "{stderr}"
    );

    // The first bad record of a file read from its start, by line.
    let (first_file, first_line, _) = bad.iter().next().unwrap().clone();
    let single = format!(
        "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, name VARCHAR, day DATE, amount DOUBLE) \
         STORED AS CSV LOCATION '{}' OPTIONS ('on_error' 'fail');\nSELECT count(*) FROM src;\n",
        data.join(&first_file).display()
    );
    let p = write_pipeline(tmp.path(), "fail.sql", &single);
    let o = flowengine()
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let at = format!("{}:{first_line}:", data.join(&first_file).display());
    assert!(stderr.contains(&at), "expected {at} in {stderr}");
    assert!(stderr.contains("'on_error' 'skip'"), "{stderr}");

    // max_bad_records stops a file that is mostly garbage.
    let p = write_pipeline(
        tmp.path(),
        "max.sql",
        &table("'on_error' 'skip', 'max_bad_records' '10'"),
    );
    let o = flowengine()
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("more than max_bad_records=10"), "{stderr}");
}

/// Without `on_error`, CSV reads with DataFusion's reader (the fast path), whose error names
/// neither the file nor, in a byte range that starts mid-file, the file's line. A failed read
/// is located: the error names the file and line, and keeps what the reader said.
#[test]
fn strict_csv_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("in");
    std::fs::create_dir(&data).unwrap();
    for (file, bad) in [("a", None), ("b", Some("20000,n20000,extra")), ("c", None)] {
        let mut text = String::from("id,name\n");
        for i in 0..40_000 {
            match bad {
                Some(line) if i == 20_000 => text.push_str(line),
                _ => text.push_str(&format!("{i},n{i}")),
            }
            text.push('\n');
        }
        std::fs::write(data.join(format!("{file}.csv")), text).unwrap();
    }
    let p = write_pipeline(
        tmp.path(),
        "strict.sql",
        &format!(
            "{PARALLEL}CREATE EXTERNAL TABLE src (id BIGINT, name VARCHAR) STORED AS CSV LOCATION '{}/';\nSELECT count(*) FROM src;\n",
            data.display()
        ),
    );
    let o = flowengine()
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    // Line 1 is the header; row i is on line i + 2.
    let at = format!("{}:20002:", data.join("b.csv").display());
    assert!(stderr.contains(&at), "expected {at} in {stderr}");
    assert!(stderr.contains("the CSV reader said"), "{stderr}");
    assert!(stderr.contains("'on_error' 'skip'"), "{stderr}");
    assert!(stderr.contains("strict.sql:"), "{stderr}");
    assert!(
        !stderr.contains("Execution error: Execution error"),
        "{stderr}"
    );
}

#[test]
fn json_dead_letters_to_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    let mut expected_bad = Vec::new();
    let mut good = 0;
    for i in 0..30_000u64 {
        let line = i + 1;
        match i % 997 {
            1 => {
                text.extend_from_slice(
                    format!("{{\"id\": {i}, \"amount\": \"lots\"}}\n").as_bytes(),
                );
                expected_bad.push(line);
            }
            2 => {
                text.extend_from_slice(format!("{{\"id\": {i}, \"amount\": 1.5\n").as_bytes());
                expected_bad.push(line);
            }
            3 => {
                text.extend_from_slice(b"{\"id\": 1, \"name\": \"\xff\"}\n");
                expected_bad.push(line);
            }
            _ => {
                text.extend_from_slice(
                    format!("{{\"id\": {i}, \"name\": \"n{i}\", \"amount\": {i}.5}}\n").as_bytes(),
                );
                good += 1;
            }
        }
    }
    let file = tmp.path().join("events.json");
    std::fs::write(&file, text).unwrap();
    let sql = format!(
        "{PARALLEL}CREATE EXTERNAL TABLE ev (id BIGINT, name VARCHAR, amount DOUBLE) STORED AS JSON \
         LOCATION '{}' OPTIONS ('on_error' 'dead_letter', 'dead_letter_table' 'bad_events');\n\
         CREATE TABLE c AS SELECT count(*) AS n FROM ev;\n\
         SELECT line, (SELECT n FROM c) AS good FROM bad_events ORDER BY line;\n",
        file.display()
    );
    let p = write_pipeline(tmp.path(), "p.sql", &sql);
    let (ok, stdout, stderr) = run_csv(&p);
    assert!(ok, "{stderr}");
    let rows: Vec<(u64, u64)> = stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (line, good) = l.split_once(',').unwrap();
            (line.parse().unwrap(), good.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), expected_bad);
    assert!(rows.iter().all(|r| r.1 == good), "{stdout}");
}

#[test]
fn bad_policy_options_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.csv"), "a\n1\n").unwrap();
    for (opts, message) in [
        ("'on_error' 'ignore'", "unknown on_error policy 'ignore'"),
        ("'on_error' 'dead_letter'", "needs a destination"),
        ("'dead_letter_path' 'x.jsonl'", "need OPTIONS ('on_error'"),
        (
            "'on_error' 'skip', 'max_bad_records' 'many'",
            "max_bad_records must be a whole number",
        ),
    ] {
        let sql = format!(
            "CREATE EXTERNAL TABLE t (a INT) STORED AS CSV LOCATION '{}' OPTIONS ({opts});\n",
            tmp.path().join("a.csv").display()
        );
        let p = write_pipeline(tmp.path(), "p.sql", &sql);
        let o = flowengine()
            .args(["run", p.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{opts}");
        assert!(stderr.contains(message), "{opts}: {stderr}");
        assert!(stderr.contains("p.sql:1:1"), "{opts}: {stderr}");
    }
}

#[test]
fn reliable_load_example_dead_letters_checks_and_loads_incrementally() {
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        flowengine()
            .env("FLOWENGINE_STATE_DIR", tmp.path().join("state"))
            .args([
                "run",
                "sql-examples/reliable_load.sql",
                "--format",
                "csv",
                "--var",
            ])
            .arg(format!("OUT_DIR={}", tmp.path().display()))
            .output()
            .unwrap()
    };
    let o = run();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(lines, vec!["9", "16", "23", "31"], "{stdout}");
    assert!(stderr.contains("4 bad records dead-lettered"), "{stderr}");
    assert!(stderr.contains("40 rows written"), "{stderr}");
    let dl = std::fs::read_to_string(tmp.path().join("dead_letters/payments.jsonl")).unwrap();
    assert_eq!(dl.lines().count(), 4);
    // A rerun loads nothing new (and dead-letters the same 4 records again for this run).
    let o = run();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("0 rows written"), "{stderr}");
}
