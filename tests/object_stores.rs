//! Object stores against real servers on loopback, started by each test on a free port and
//! stopped at its end: moto (S3-compatible, from PyPI) and Azurite (Azure Blob, from npm).
//! Reads (listing, globs, hive partitions), writes (`COPY ... TO`, partitioned, multipart for
//! large files), and credentials from the environment, options and secret references.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::stores::{Server, create_bucket, start_moto, wait_for_port};
use common::{flowengine, write_pipeline};
use predicates::prelude::*;

fn s3_env(cmd: &mut assert_cmd::Command, port: u16) {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
}

fn run_csv_with(pipeline: &Path, setup: impl Fn(&mut assert_cmd::Command)) -> String {
    let mut cmd = flowengine();
    setup(&mut cmd);
    let out = cmd
        .arg("run")
        .arg(pipeline)
        .args(["--format", "csv"])
        .assert()
        .success()
        .get_output()
        .clone();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn s3_write_partitioned_read_with_listing_globs_and_hive_partitions() {
    let moto = start_moto();
    create_bucket(moto.port, "lake");
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "s3.sql",
        "COPY (SELECT value AS id, value % 10 AS amount, CASE WHEN value % 2 = 0 THEN 'eu' ELSE 'us' END AS region FROM generate_series(1, 10000))
  TO 's3://lake/sales/' STORED AS PARQUET PARTITIONED BY (region);
COPY (SELECT value AS id FROM generate_series(1, 50)) TO 's3://lake/csv/a.csv';
COPY (SELECT value AS id FROM generate_series(51, 80)) TO 's3://lake/csv/b.csv';
CREATE EXTERNAL TABLE sales STORED AS PARQUET LOCATION 's3://lake/sales/';
CREATE EXTERNAL TABLE ids STORED AS CSV LOCATION 's3://lake/csv/*.csv';
SELECT (SELECT count(*) FROM sales WHERE region = 'eu') AS eu,
       (SELECT sum(amount) FROM sales) AS total,
       (SELECT count(*) FROM ids) AS ids,
       (SELECT max(id) FROM ids) AS max_id;",
    );
    let out = run_csv_with(&p, |c| s3_env(c, moto.port));
    assert_eq!(out.trim(), "eu,total,ids,max_id\n5000,45000,80,80");

    // The example pipeline: hive-partitioned Parquet written to the bucket and read back.
    let example = common::repo("sql-examples/s3_lake.sql");
    let out = flowengine()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", moto.port),
        )
        .args(["run", "--format", "csv", "--var", "BUCKET=lake"])
        .arg(&example)
        .assert()
        .success()
        .get_output()
        .clone();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.starts_with("month,orders,items\n2024-03,"), "{out}");
    assert!(out.lines().skip(1).all(|l| &l[..7] >= "2024-03"), "{out}");
}

/// Credentials and endpoint as table options, the secret key from a secret reference; a file
/// large enough to be uploaded in parts; an unknown store option is named.
#[test]
fn s3_options_secrets_and_multipart_upload() {
    let moto = start_moto();
    create_bucket(moto.port, "big");
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    // ~40 MB of CSV: object_store switches to a multipart upload above 10 MB.
    let p = write_pipeline(
        dir.path(),
        "big.sql",
        &format!(
            "COPY (SELECT value AS id, repeat('x', 30) AS pad FROM generate_series(1, 1000000)) TO 's3://big/out/data.csv';
CREATE EXTERNAL TABLE big STORED AS CSV LOCATION 's3://big/out/data.csv'
OPTIONS ('aws.access_key_id' 'testing', 'aws.secret_access_key' '${{secret:S3_SECRET}}',
         'aws.region' 'us-east-1', 'aws.endpoint' '{endpoint}');
SELECT count(*) AS n, sum(id) AS s FROM big;"
        ),
    );
    let out = run_csv_with(&p, |c| {
        s3_env(c, moto.port);
        c.env("FLOWENGINE_SECRET_S3_SECRET", "testing");
    });
    assert_eq!(out.trim(), "n,s\n1000000,500000500000");
    // The object was uploaded in parts (to its staging name, then copied into place).
    let log = moto.log();
    assert!(
        log.lines()
            .any(|l| l.contains("POST /big/out/") && l.contains("uploads")),
        "no multipart upload in the server log:\n{log}"
    );
    // The listing shows the object under its final name and size only.
    let listing = Command::new("curl")
        .args(["-sf", &format!("{endpoint}/big?list-type=2&prefix=out/")])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let field = |name: &str| -> String {
        let open = format!("<{name}>");
        let start = listing.find(&open).map(|i| i + open.len()).unwrap_or(0);
        let end = listing[start..].find('<').map_or(start, |i| start + i);
        listing[start..end].replace("&#34;", "").replace('"', "")
    };
    assert_eq!(field("Key"), "out/data.csv", "{listing}");
    let len: u64 = field("Size").parse().unwrap_or(0);
    assert!(
        len > 30_000_000,
        "uploaded object is {len} bytes:\n{listing}"
    );

    let typo = write_pipeline(
        dir.path(),
        "typo.sql",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 's3://big/out/data.csv' OPTIONS ('aws.regoin' 'x');",
    );
    flowengine()
        .arg("run")
        .arg(&typo)
        .assert()
        .failure()
        .stderr(predicate::str::contains("aws.regoin"));
}

/// A failed statement leaves nothing in the bucket that looks like output.
#[test]
fn s3_failed_copy_leaves_no_object() {
    let moto = start_moto();
    create_bucket(moto.port, "atomic");
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "fail.sql",
        "COPY (SELECT CASE WHEN value = 900000 THEN CAST('x' AS INT) ELSE value END AS id FROM generate_series(1, 1000000)) TO 's3://atomic/out/data.csv';",
    );
    let mut cmd = flowengine();
    s3_env(&mut cmd, moto.port);
    cmd.arg("run").arg(&p).assert().failure();
    let listing = Command::new("curl")
        .args([
            "-sf",
            &format!("http://127.0.0.1:{}/atomic?list-type=2", moto.port),
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(!listing.contains("data.csv</Key>"), "{listing}");
}

/// Azurite's blob service, started with npm's `azurite-blob` (`.ci/run` installs it).
fn start_azurite(dir: &Path) -> Server {
    let port = common::free_port();
    let mut child = Command::new("azurite-blob")
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir)
        .args(["--skipApiVersionCheck", "--loose", "--silent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("azurite-blob starts (npm install -g azurite)");
    wait_for_port(port, "azurite", &mut child);
    Server {
        child,
        port,
        log: None,
    }
}

/// Azurite's well-known development account.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn create_container(port: u16, name: &str) {
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZ_ACCOUNT};"
    );
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys; from azure.storage.blob import BlobServiceClient as B; B.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
            &conn,
            name,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "container {name} created");
}

/// The Azure example pipeline against Azurite: COPY into a container, then read it back with
/// the account key from a secret reference.
#[test]
fn azure_blob_write_and_read_back() {
    let data = tempfile::tempdir().unwrap();
    let azurite = start_azurite(data.path());
    create_container(azurite.port, "lake");
    let endpoint = format!("http://127.0.0.1:{}/{AZ_ACCOUNT}", azurite.port);
    let out = flowengine()
        // The COPY finds the store from the environment, as Azure's tools do.
        .env("AZURE_STORAGE_ACCOUNT_NAME", AZ_ACCOUNT)
        .env("AZURE_STORAGE_ACCOUNT_KEY", AZ_KEY)
        .env("AZURE_STORAGE_ENDPOINT", &endpoint)
        .env("AZURE_ALLOW_HTTP", "true")
        .env("FLOWENGINE_SECRET_AZURE_KEY", AZ_KEY)
        .args(["run", "--format", "csv"])
        .args([
            "--var",
            "CONTAINER=lake",
            "--var",
            &format!("ACCOUNT={AZ_ACCOUNT}"),
        ])
        .args([
            "--var",
            &format!("AZURE_ENDPOINT={endpoint}"),
            "--var",
            "ALLOW_HTTP=true",
        ])
        .arg(common::repo("sql-examples/azure_blob.sql"))
        .assert()
        .success()
        .get_output()
        .clone();
    let out = String::from_utf8(out.stdout).unwrap();
    let customers =
        std::fs::read_to_string(common::repo("sql-examples/data/customers.csv")).unwrap();
    let top: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(top.len(), 3, "{out}");
    // The first country's count equals the CSV's own count for it.
    let (country, n) = top[0].split_once(',').unwrap();
    let expected = customers
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(2) == Some(country))
        .count();
    assert_eq!(n.parse::<usize>().unwrap(), expected, "{out}");
    assert!(!out.contains(AZ_KEY));
}

/// Plain HTTP(S) locations: a file served by a local web server is a table.
#[test]
fn http_file_is_a_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cities.csv"),
        "city,pop\nOslo,700\nBergen,290\n",
    )
    .unwrap();
    std::fs::copy(
        common::repo("sql-examples/data/products.csv"),
        dir.path().join("products.csv"),
    )
    .unwrap();
    let port = common::free_port();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "http.server", &mut child);
    let server = Server {
        child,
        port,
        log: None,
    };
    let p = write_pipeline(
        dir.path(),
        "http.sql",
        &format!(
            "CREATE EXTERNAL TABLE cities STORED AS CSV LOCATION 'http://127.0.0.1:{}/cities.csv';
SELECT sum(pop) AS pop FROM cities;",
            server.port
        ),
    );
    assert_eq!(run_csv_with(&p, |_| {}).trim(), "pop\n990");

    let out = flowengine()
        .args(["run", "--format", "csv", "--var"])
        .arg(format!("BASE_URL=http://127.0.0.1:{}", server.port))
        .arg(common::repo("sql-examples/http_file.sql"))
        .assert()
        .success()
        .get_output()
        .clone();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.starts_with("category,products,avg_price\n"), "{out}");
    let products = std::fs::read_to_string(common::repo("sql-examples/data/products.csv")).unwrap();
    let total: usize = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(total, products.lines().count() - 1, "{out}");
}

/// A web server answering 503 to its first requests: object_store's retry layer (exponential
/// backoff with jitter) gets the file anyway; a 404 is not retried.
#[test]
fn http_requests_are_retried_on_5xx() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n.csv"), "n\n1\n2\n3\n").unwrap();
    let script = r#"
import http.server, sys
state = {"left": int(sys.argv[2])}
class H(http.server.SimpleHTTPRequestHandler):
    def fail(self):
        if state["left"] > 0:
            state["left"] -= 1
            self.send_response(503); self.send_header("Content-Length", "0"); self.end_headers()
            sys.stderr.write("503\n"); sys.stderr.flush()
            return True
        return False
    def do_GET(self):
        if not self.fail(): super().do_GET()
    def do_HEAD(self):
        if not self.fail(): super().do_HEAD()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    let port = common::free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string(), "3"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, "flaky http server", &mut child);
    let server = Server {
        child,
        port,
        log: Some(log),
    };
    let p = write_pipeline(
        dir.path(),
        "flaky.sql",
        &format!(
            "CREATE EXTERNAL TABLE n STORED AS CSV LOCATION 'http://127.0.0.1:{}/n.csv' OPTIONS ('retry.init_backoff' '20ms');
SELECT sum(n) AS s FROM n;",
            server.port
        ),
    );
    assert_eq!(run_csv_with(&p, |_| {}).trim(), "s\n6");
    let log = server.log();
    assert_eq!(log.lines().filter(|l| *l == "503").count(), 3, "{log}");

    let missing = write_pipeline(
        dir.path(),
        "missing.sql",
        &format!(
            "CREATE EXTERNAL TABLE m STORED AS CSV LOCATION 'http://127.0.0.1:{}/missing.csv';",
            server.port
        ),
    );
    let started = std::time::Instant::now();
    flowengine().arg("run").arg(&missing).assert().failure();
    // Retrying would go on for object_store's retry timeout (3 minutes); a loaded CI machine can
    // take tens of seconds for the run itself, so the bound is loose.
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "a 404 must not be retried for long"
    );
}
