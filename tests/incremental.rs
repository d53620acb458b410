//! Incremental loads end to end: `CREATE INCREMENTAL VIEW ... BY column` over a directory of
//! files reads only the rows past the committed watermark; a failed run does not advance it;
//! `--resume` reuses the failed run's high mark so nothing is loaded twice.

mod common;

use std::path::Path;

use common::*;

fn add_file(dir: &Path, name: &str, ids: std::ops::RangeInclusive<u32>) {
    let mut text = String::from("id,updated_at,amount\n");
    for id in ids {
        text.push_str(&format!(
            "{id},2024-03-{:02}T10:{:02}:00,{id}.5\n",
            1 + id / 60,
            id % 60
        ));
    }
    std::fs::write(dir.join(name), text).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    src: std::path::PathBuf,
    sink: std::path::PathBuf,
    pipeline: std::path::PathBuf,
}

fn setup(extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let src = root.join("landing");
    let sink = root.join("warehouse");
    std::fs::create_dir_all(&src).unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE orders (id INT, updated_at TIMESTAMP, amount DOUBLE) STORED AS CSV LOCATION '{}/';\n\
         CREATE EXTERNAL TABLE facts (id INT, updated_at TIMESTAMP, amount DOUBLE) STORED AS PARQUET LOCATION '{}/';\n\
         CREATE INCREMENTAL VIEW new_orders ON orders BY updated_at;\n\
         {extra}\
         INSERT INTO facts SELECT * FROM new_orders;\n\
         SELECT CAST('${{FAIL}}' AS INT) AS check_after_load;\n",
        src.display(),
        sink.display()
    );
    let pipeline = write_pipeline(&root, "load.sql", &sql);
    Setup {
        _tmp: tmp,
        root,
        src,
        sink,
        pipeline,
    }
}

fn run(s: &Setup, fail: bool, resume: bool) -> (bool, String) {
    let mut cmd = flowengine();
    cmd.env("FLOWENGINE_STATE_DIR", s.root.join("state"))
        .arg("run")
        .arg(&s.pipeline)
        .args(["--var", if fail { "FAIL=boom" } else { "FAIL=1" }]);
    if resume {
        cmd.arg("--resume");
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// (rows, distinct ids) in the sink, read by a separate process.
fn sink_rows(s: &Setup) -> (u64, u64) {
    let p = write_pipeline(
        &s.root,
        "count.sql",
        &format!(
            "CREATE EXTERNAL TABLE f STORED AS PARQUET LOCATION '{}/';\nSELECT count(*), count(DISTINCT id) FROM f;\n",
            s.sink.display()
        ),
    );
    let o = flowengine()
        .env("FLOWENGINE_STATE_DIR", s.root.join("state"))
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let (a, b) = out.lines().nth(1).unwrap().split_once(',').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn only_new_rows_arrive_and_a_failed_run_keeps_the_watermark() {
    let s = setup("");
    add_file(&s.src, "a.csv", 1..=100);
    let (ok, err) = run(&s, false, false);
    assert!(ok, "{err}");
    assert!(
        err.contains("after the start up to 2024-03-02T10:40:00"),
        "{err}"
    );
    assert_eq!(sink_rows(&s), (100, 100));

    // New rows at the source: only they arrive.
    add_file(&s.src, "b.csv", 101..=150);
    let (ok, err) = run(&s, false, false);
    assert!(ok, "{err}");
    assert!(
        err.contains("after 2024-03-02T10:40:00 up to 2024-03-03T10:30:00"),
        "{err}"
    );
    assert_eq!(sink_rows(&s), (150, 150));

    // Nothing new: nothing arrives, the watermark stays.
    let (ok, err) = run(&s, false, false);
    assert!(ok, "{err}");
    assert_eq!(sink_rows(&s), (150, 150));

    // A run that fails before the load commits nothing and does not advance the watermark.
    let s2 = Setup {
        pipeline: write_pipeline(
            &s.root,
            "load.sql",
            &std::fs::read_to_string(&s.pipeline).unwrap().replace(
                "INSERT INTO facts",
                "SELECT CAST('${FAIL}' AS INT);\nINSERT INTO facts",
            ),
        ),
        ..s
    };
    add_file(&s2.src, "c.csv", 151..=160);
    let (ok, _) = run(&s2, true, false);
    assert!(!ok);
    assert_eq!(sink_rows(&s2), (150, 150));
    let (ok, err) = run(&s2, false, false);
    assert!(ok, "{err}");
    assert_eq!(sink_rows(&s2), (160, 160));

    // system.watermarks shows the committed high marks.
    let p = write_pipeline(
        &s2.root,
        "marks.sql",
        "SELECT value FROM system.watermarks WHERE committed AND name = 'new_orders' ORDER BY recorded_at DESC LIMIT 1;\n",
    );
    let o = flowengine()
        .env("FLOWENGINE_STATE_DIR", s2.root.join("state"))
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().nth(1),
        Some("2024-03-03T10:40:00"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn resume_after_the_load_committed_does_not_load_twice() {
    let s = setup("");
    add_file(&s.src, "a.csv", 1..=40);
    // The load commits, then a later step fails.
    let (ok, _) = run(&s, true, false);
    assert!(!ok);
    assert_eq!(sink_rows(&s), (40, 40));
    // Rows that arrive before the resume wait for the next run.
    add_file(&s.src, "b.csv", 41..=50);
    let (ok, err) = run(&s, false, true);
    assert!(ok, "{err}");
    assert_eq!(sink_rows(&s), (40, 40), "{err}");
    let (ok, err) = run(&s, false, false);
    assert!(ok, "{err}");
    assert_eq!(sink_rows(&s), (50, 50));
}

/// The same incremental load from a PostgreSQL source into a PostgreSQL sink: rows added at the
/// source after a run are the only ones the next run reads, and the filter on the watermark
/// column runs in PostgreSQL.
#[test]
fn postgres_source_loads_only_new_rows() {
    let db = common::databases::Backend::postgres();
    let src = db.table("fe_inc_src");
    let dst = db.table("fe_inc_dst");
    psql(&format!(
        "CREATE TABLE {src} (id int PRIMARY KEY, updated_at timestamp, amount numeric(10,2));
         INSERT INTO {src} SELECT g, timestamp '2024-03-01' + g * interval '1 minute', g / 2.0 FROM generate_series(1, 1000) g;
         CREATE TABLE {dst} (id int PRIMARY KEY, updated_at timestamp, amount numeric(10,2));"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let url = "postgresql://postgres@127.0.0.1:5432/test";
    let pipeline = write_pipeline(
        tmp.path(),
        "pg_inc.sql",
        &format!(
            "CREATE EXTERNAL TABLE orders STORED AS POSTGRES LOCATION '{src}' OPTIONS ('connection' '{url}');
CREATE EXTERNAL TABLE facts STORED AS POSTGRES LOCATION '{dst}' OPTIONS ('connection' '{url}');
CREATE INCREMENTAL VIEW new_orders ON orders BY updated_at;
INSERT INTO facts SELECT * FROM new_orders;
"
        ),
    );
    let run = || {
        let out = flowengine()
            .env("FLOWENGINE_STATE_DIR", tmp.path().join("state"))
            .arg("run")
            .arg(&pipeline)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains("1,000 rows written"), "{first}");
    assert_eq!(
        psql(&format!("SELECT count(*), sum(id) FROM {dst}")),
        "1000|500500"
    );
    psql(&format!(
        "INSERT INTO {src} SELECT g, timestamp '2024-03-01' + g * interval '1 minute', g / 2.0 FROM generate_series(1001, 1250) g"
    ));
    let second = run();
    assert!(second.contains("250 rows written"), "{second}");
    assert_eq!(
        psql(&format!("SELECT count(*), sum(id) FROM {dst}")),
        "1250|781875"
    );
    // Nothing new: nothing written, the primary key would have rejected duplicates anyway.
    let third = run();
    assert!(third.contains("0 rows written"), "{third}");
}
