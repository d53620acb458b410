//! Helpers shared by the CLI end-to-end tests.
#![allow(dead_code)]

pub(crate) mod certs;
pub(crate) mod cluster;
pub(crate) mod databases;
pub(crate) mod flight;
pub(crate) mod queues;
pub(crate) mod server;
pub(crate) mod stores;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub(crate) fn flowengine() -> Command {
    let mut cmd = Command::cargo_bin("flowengine").expect("binary built");
    // Tests must not pick up a developer's flowengine.toml or FLOWENGINE_* settings.
    cmd.env_remove("FLOWENGINE_CONFIG");
    // Run records of the tests go to a scratch journal, not the repository's .flowengine/.
    cmd.env(
        "FLOWENGINE_STATE_DIR",
        std::env::temp_dir().join("flowengine-test-state"),
    );
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// `flowengine run PIPELINE --format csv`: (succeeded, stdout, stderr).
pub(crate) fn run_csv(pipeline: &Path) -> (bool, String, String) {
    let o = flowengine()
        .arg("run")
        .arg(pipeline)
        .args(["--format", "csv"])
        .output()
        .expect("the binary runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(crate) fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

pub(crate) fn bad(p: &str) -> PathBuf {
    repo("tests/bad_inputs").join(p)
}

pub(crate) fn write_pipeline(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p
}

/// Files below `dir`, relative, sorted.
pub(crate) fn tree(dir: &Path) -> Vec<String> {
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

pub(crate) fn parquet_rows(path: &Path) -> i64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).unwrap();
    SerializedFileReader::new(f)
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows()
}

/// Run `sql-examples/NAME.sql` with `OUT_DIR=out`; returns (stdout, stderr).
pub(crate) fn run_example(name: &str, format: &str, out: &Path) -> (String, String) {
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

/// Run SQL with `psql` against the local PostgreSQL (database `test`) and return its unaligned,
/// tuples-only output.
pub(crate) fn psql(sql: &str) -> String {
    databases::Backend::postgres().exec(sql)
}

/// The argon2 hash `flowengine user hash-password` prints for `password` (read from stdin).
pub(crate) fn hash_password(password: &str) -> String {
    let out = flowengine()
        .args(["user", "hash-password"])
        .write_stdin(format!("{password}\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A new API key from `flowengine user new-api-key`: (key, key_sha256).
pub(crate) fn api_key() -> (String, String) {
    let out = flowengine().args(["user", "new-api-key"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    (field("key:"), field("key_sha256:"))
}

/// A loopback port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
