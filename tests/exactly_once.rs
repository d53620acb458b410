//! Exactly-once file writes across crashes. A run is aborted (as a kill would: no cleanup) at
//! each named point of its commits (`FLOWENGINE_FAULT`, see `engine/src/faults.rs`), resumed,
//! and loaded once more; what it leaves must equal what clean runs leave: the same rows, the
//! same files, and no staging file (a dead run's leftovers are removed where the next run
//! writes). On a local directory and on S3 (moto).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::stores::{create_bucket, start_moto};
use common::*;

/// Where the outputs go and how to list them.
struct Target {
    /// `'/tmp/x/out'` or `'s3://bucket/out'`.
    out: String,
    env: Vec<(String, String)>,
    /// Every file (object) name under `out`, staged ones included.
    list: Box<dyn Fn() -> Vec<String>>,
}

fn local(dir: &Path) -> Target {
    let out = dir.join("out");
    let root = out.clone();
    Target {
        out: out.display().to_string(),
        env: Vec::new(),
        list: Box::new(move || tree(&root)),
    }
}

fn s3(port: u16, bucket: &str) -> Target {
    create_bucket(port, bucket);
    let listing = format!("http://127.0.0.1:{port}/{bucket}?list-type=2&max-keys=10000");
    Target {
        out: format!("s3://{bucket}/out"),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{port}"),
            ),
        ],
        list: Box::new(move || {
            let o = Command::new("curl")
                .args(["-sf", &listing])
                .output()
                .unwrap();
            let xml = String::from_utf8_lossy(&o.stdout).to_string();
            xml.split("<Key>")
                .skip(1)
                .filter_map(|k| k.split("</Key>").next())
                .map(str::to_string)
                .collect()
        }),
    }
}

/// One load: a source directory of CSV batches, and the pipeline that loads what is new into a
/// partitioned COPY (statement 3) and an INSERT into a file table (statement 5).
struct Load {
    dir: PathBuf,
    src: PathBuf,
    pipeline: PathBuf,
}

fn load(dir: &Path, out: &str) -> Load {
    let src = dir.join("landing");
    std::fs::create_dir_all(&src).unwrap();
    let pipeline = write_pipeline(
        dir,
        "load.sql",
        &format!(
            "CREATE EXTERNAL TABLE orders (id INT, p INT) STORED AS CSV LOCATION '{src}/';\n\
             CREATE INCREMENTAL VIEW new_orders ON orders BY id;\n\
             COPY (SELECT id, p FROM new_orders) TO '{out}/parts/' STORED AS PARQUET PARTITIONED BY (p);\n\
             CREATE EXTERNAL TABLE facts (id INT, p INT) STORED AS PARQUET LOCATION '{out}/facts/';\n\
             INSERT INTO facts SELECT id, p FROM new_orders;\n",
            src = src.display()
        ),
    );
    Load {
        dir: dir.to_path_buf(),
        src,
        pipeline,
    }
}

fn add_batch(l: &Load, name: &str, ids: std::ops::RangeInclusive<u32>) {
    let mut text = String::from("id,p\n");
    for id in ids {
        text.push_str(&format!("{id},{}\n", id % 40));
    }
    std::fs::write(l.src.join(name), text).unwrap();
}

/// `flowengine run` of the load, with `fault` set or `--resume`; its exit and stderr.
fn run(l: &Load, t: &Target, fault: Option<&str>, resume: bool) -> (bool, String) {
    let mut cmd = flowengine();
    cmd.env("FLOWENGINE_STATE_DIR", l.dir.join("state"));
    for (k, v) in &t.env {
        cmd.env(k, v);
    }
    if let Some(f) = fault {
        cmd.env("FLOWENGINE_FAULT", f);
    }
    cmd.arg("run");
    if resume {
        cmd.arg("--resume");
    }
    let o = cmd.arg(&l.pipeline).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Rows, distinct ids and their sum in both outputs, read by a fresh process.
fn contents(l: &Load, t: &Target) -> String {
    let out = &t.out;
    let p = write_pipeline(
        &l.dir,
        "contents.sql",
        &format!(
            "CREATE EXTERNAL TABLE parts STORED AS PARQUET LOCATION '{out}/parts/';\n\
             CREATE EXTERNAL TABLE facts (id INT, p INT) STORED AS PARQUET LOCATION '{out}/facts/';\n\
             SELECT (SELECT count(*) FROM parts) AS parts_rows, \
                    (SELECT count(DISTINCT id) FROM parts) AS parts_ids, \
                    (SELECT sum(id) FROM parts) AS parts_sum, \
                    (SELECT count(DISTINCT p) FROM parts) AS partitions, \
                    (SELECT count(*) FROM facts) AS facts_rows, \
                    (SELECT count(DISTINCT id) FROM facts) AS facts_ids, \
                    (SELECT sum(id) FROM facts) AS facts_sum;\n"
        ),
    );
    let mut cmd = flowengine();
    cmd.env("FLOWENGINE_STATE_DIR", l.dir.join("contents-state"));
    for (k, v) in &t.env {
        cmd.env(k, v);
    }
    let o = cmd
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Files under the outputs: how many are in place, and the staged ones.
fn files(t: &Target) -> (usize, Vec<String>) {
    let all = (t.list)();
    let staged: Vec<String> = all
        .iter()
        .filter(|f| f.contains(".flowengine-"))
        .cloned()
        .collect();
    let placed = all
        .iter()
        .filter(|f| f.ends_with(".parquet") && !f.contains(".flowengine-"))
        .count();
    (placed, staged)
}

/// Two loads (2,000 rows, then 1,000 more), the first aborted at `fault` and resumed.
fn two_loads(dir: &Path, t: &Target, fault: Option<&str>) -> (String, usize) {
    let l = load(dir, &t.out);
    add_batch(&l, "a.csv", 1..=2000);
    if let Some(fault) = fault {
        let (ok, log) = run(&l, t, Some(fault), false);
        assert!(!ok, "{fault}: the run was not aborted:\n{log}");
        assert!(log.contains("aborting at"), "{fault}:\n{log}");
        let (ok, log) = run(&l, t, None, true);
        assert!(ok, "{fault}: resume failed:\n{log}");
        assert!(log.contains("resuming run"), "{fault}:\n{log}");
        if fault.starts_with("commit.before_record") {
            assert!(
                log.contains("that dead runs left behind"),
                "{fault}:\n{log}"
            );
        } else if fault.starts_with("commit.") || fault.starts_with("step.before_record") {
            assert!(
                log.contains("finished the interrupted commit"),
                "{fault}:\n{log}"
            );
        }
    } else {
        let (ok, log) = run(&l, t, None, false);
        assert!(ok, "{log}");
    }
    add_batch(&l, "b.csv", 2001..=3000);
    let (ok, log) = run(&l, t, None, false);
    assert!(ok, "{fault:?}: the next load failed:\n{log}");
    let (placed, staged) = files(t);
    assert!(
        staged.is_empty(),
        "{fault:?}: staging files remain: {staged:?}"
    );
    (contents(&l, t), placed)
}

const FAULTS: &[&str] = &[
    // Killed while writing: staged files, no commit; resume writes again and removes them.
    "commit.before_record:3",
    "commit.before_record:5",
    // Statement 3's commit: recorded, then killed before, during and after its renames.
    "commit.before_renames",
    "commit.rename:1",
    "commit.rename:17",
    "commit.rename:40",
    "step.before_record:3",
    "step.after_record:3",
    // Statement 5 (the INSERT): committed, killed before its step was recorded.
    "step.before_record:5",
    // Every write committed, the watermark not yet.
    "run.before_watermarks",
];

fn every_fault(make: impl Fn(&str) -> (tempfile::TempDir, Target)) {
    let (dir, t) = make("clean");
    let (expected, expected_files) = two_loads(dir.path(), &t, None);
    assert!(
        expected.contains("3000,3000,4501500,40,3000,3000,4501500"),
        "{expected}"
    );
    for (i, fault) in FAULTS.iter().enumerate() {
        let (dir, t) = make(&format!("fault{i}"));
        let (got, got_files) = two_loads(dir.path(), &t, Some(fault));
        assert_eq!(got, expected, "{fault}: rows differ from a clean run");
        assert_eq!(
            got_files, expected_files,
            "{fault}: files differ from a clean run"
        );
    }
}

#[test]
fn local_commits_killed_at_every_point_resume_to_a_clean_result() {
    every_fault(|_| {
        let dir = tempfile::tempdir().unwrap();
        let t = local(dir.path());
        (dir, t)
    });
}

#[test]
fn s3_commits_killed_at_every_point_resume_to_a_clean_result() {
    let moto = start_moto();
    let port = moto.port;
    every_fault(|name| {
        let dir = tempfile::tempdir().unwrap();
        let t = s3(port, &format!("once-{name}"));
        (dir, t)
    });
}
