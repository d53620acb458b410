//! Parquet modular encryption at rest, end to end through `flowengine run`/`sql`: files written
//! with a configured key are unreadable without it (also to a plain Parquet reader), read back
//! with it, survive key rotation, and a missing or wrong key fails clearly without echoing keys.

mod common;

use std::path::Path;

use common::*;

const KEY_A: &str = "00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn config(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn sql(cfg: &Path, query: &str, secrets: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = flowengine();
    cmd.args(["sql", "--format", "csv", "--config"]).arg(cfg);
    cmd.args(["-c", query]);
    for (k, v) in secrets {
        cmd.env(format!("FLOWENGINE_SECRET_{k}"), v);
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn copy_to_parquet_is_encrypted_and_reads_back_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secret.parquet");
    let keyed = config(
        dir.path(),
        "keyed.toml",
        "[parquet_encryption]\nkeys = { k1 = \"${secret:PQ_A}\" }\n",
    );
    let plain = config(dir.path(), "plain.toml", "batch_size = 8192\n");

    // A pipeline writes an encrypted file: COPY through the factory, no key in the SQL.
    let pipeline = write_pipeline(
        dir.path(),
        "write.sql",
        &format!(
            "CREATE TABLE t (id INT, email VARCHAR) AS VALUES (1, 'ana@example.com'), (2, 'bo@example.com');\n\
             COPY t TO '{}' STORED AS PARQUET;\n",
            out.display()
        ),
    );
    let o = flowengine()
        .args(["run", "--config"])
        .arg(&keyed)
        .arg(&pipeline)
        .env("FLOWENGINE_SECRET_PQ_A", KEY_A)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains(KEY_A), "the key leaked: {stderr}");

    // The bytes hold neither the values nor the schema; the footer is encrypted ("PARE").
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[bytes.len() - 4..], b"PARE", "footer not encrypted");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("ana@example.com") && !text.contains("email"));

    // A plain Parquet reader cannot open it.
    let file = std::fs::File::open(&out).unwrap();
    assert!(parquet::file::reader::SerializedFileReader::new(file).is_err());

    // With the key: the rows come back, through a table and through a direct file query.
    let read = format!(
        "CREATE EXTERNAL TABLE s STORED AS PARQUET LOCATION '{}'; SELECT id, email FROM s ORDER BY id",
        out.display()
    );
    let (ok, stdout, stderr) = sql(&keyed, &read, &[("PQ_A", KEY_A)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.ends_with("id,email\n1,ana@example.com\n2,bo@example.com\n"),
        "{stdout}"
    );

    // Without any key configured: a clear error, no data.
    let (ok, stdout, stderr) = sql(&plain, &read, &[]);
    assert!(!ok, "read without a key succeeded: {stdout}");
    assert!(
        stderr.to_lowercase().contains("encrypt") && !stdout.contains("ana@"),
        "{stderr}"
    );

    // With the wrong key under the same name: refused, and no key is printed.
    let (ok, _, stderr) = sql(&keyed, &read, &[("PQ_A", &KEY_B[..32])]);
    assert!(!ok);
    assert!(
        !stderr.contains(KEY_A) && !stderr.contains(&KEY_B[..32]),
        "{stderr}"
    );

    // Plain files stay readable while encryption is configured.
    let plain_file = dir.path().join("plain.parquet");
    let (ok, _, stderr) = sql(
        &plain,
        &format!(
            "COPY (SELECT 7 AS n) TO '{}' STORED AS PARQUET",
            plain_file.display()
        ),
        &[],
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = sql(
        &keyed,
        &format!(
            "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION '{}'; SELECT n FROM p",
            plain_file.display()
        ),
        &[("PQ_A", KEY_A)],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with("n\n7\n"), "{stdout}");
}

fn table(name: &str, file: &Path) -> String {
    format!(
        "CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '{}';",
        file.display()
    )
}

#[test]
fn rotated_keys_read_old_files_and_write_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("old.parquet");
    let new_file = dir.path().join("new.parquet");
    let v1 = config(
        dir.path(),
        "v1.toml",
        "[parquet_encryption]\nkeys = { k1 = \"${secret:PQ_A}\" }\n",
    );
    let v2 = config(
        dir.path(),
        "v2.toml",
        "[parquet_encryption]\nkeys = { k1 = \"${secret:PQ_A}\", k2 = \"${secret:PQ_B}\" }\nwrite_key = \"k2\"\n",
    );
    let only_k2 = config(
        dir.path(),
        "k2.toml",
        "[parquet_encryption]\nkeys = { k2 = \"${secret:PQ_B}\" }\n",
    );
    let both = [("PQ_A", KEY_A), ("PQ_B", KEY_B)];
    let (ok, _, e) = sql(
        &v1,
        &format!(
            "COPY (SELECT 1 AS v) TO '{}' STORED AS PARQUET",
            old_file.display()
        ),
        &both,
    );
    assert!(ok, "{e}");
    let (ok, _, e) = sql(
        &v2,
        &format!(
            "COPY (SELECT 2 AS v) TO '{}' STORED AS PARQUET",
            new_file.display()
        ),
        &both,
    );
    assert!(ok, "{e}");
    let union = format!(
        "{} {} SELECT v FROM old UNION ALL SELECT v FROM new ORDER BY v",
        table("old", &old_file),
        table("new", &new_file)
    );
    let (ok, stdout, e) = sql(&v2, &union, &both);
    assert!(ok, "{e}");
    assert!(stdout.ends_with("v\n1\n2\n"), "{stdout}");

    // A reader holding only the new key reads the new file and names the missing old key.
    let (ok, stdout, e) = sql(
        &only_k2,
        &format!("{} SELECT v FROM new", table("new", &new_file)),
        &both,
    );
    assert!(ok && stdout.ends_with("v\n2\n"), "{stdout}{e}");
    let (ok, _, e) = sql(
        &only_k2,
        &format!("{} SELECT v FROM old", table("old", &old_file)),
        &both,
    );
    assert!(!ok);
    assert!(e.contains("`k1`") && e.contains("not among"), "{e}");
    assert!(!e.contains(KEY_A) && !e.contains(KEY_B), "{e}");
}

#[test]
fn plain_text_keys_in_the_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "bad.toml",
        &format!("[parquet_encryption]\nkeys = {{ k1 = \"{KEY_A}\" }}\n"),
    );
    let o = flowengine()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("secret reference"), "{stderr}");
    assert!(!stderr.contains(KEY_A), "{stderr}");
}
