//! Cluster execution on Apache DataFusion Ballista: a scheduler and two executors, each a
//! separate `flowengine` process on loopback, run the 22 TPC-H queries (SF 0.01, Parquet) and
//! a CSV -> Parquet ETL with the same results as a single-node run; tables Ballista cannot ship
//! are refused with an error naming them; killing an executor during a query leaves a
//! cluster that keeps serving; tables on an S3-compatible server (moto), declared with store
//! options and secret references, are read and written by the nodes; FlowEngine's own
//! connector tables (PostgreSQL here) are opened and read by the executors themselves; writes
//! on the cluster commit only when the whole job succeeds.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// Two free ports next to each other (an executor's Flight port and its gRPC port).
fn free_port_pair() -> u16 {
    loop {
        let p = common::free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(args: &[String], log: &Path, env: &[(&str, String)]) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flowengine"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("FLOWENGINE_CONFIG")
        .env_remove("FLOWENGINE_CLUSTER")
        // Nodes reach object stores only through what the session sends them.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT")
        .env("FLOWENGINE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start flowengine")
}

/// A scheduler and two executors; all killed on drop.
struct Cluster {
    scheduler: Child,
    executors: Vec<Child>,
    url: String,
    logs: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A cluster whose nodes have `env` set (secrets, for instance).
    fn start_with(env: &[(&str, String)]) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let scheduler = spawn(
            &[
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--executor-timeout-secs".into(),
                "5".into(),
                "--task-max-failures".into(),
                "4".into(),
            ],
            &logs.path().join("scheduler.log"),
            env,
        );
        wait_port(port, "the scheduler");
        let mut executors = Vec::new();
        for i in 0..2 {
            let flight = free_port_pair();
            executors.push(spawn(
                &[
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{port}"),
                    "--bind".into(),
                    format!("127.0.0.1:{flight}"),
                    "--concurrent-tasks".into(),
                    "2".into(),
                    "--heartbeat-secs".into(),
                    "1".into(),
                    "--work-dir".into(),
                    logs.path().join(format!("work{i}")).display().to_string(),
                ],
                &logs.path().join(format!("executor{i}.log")),
                env,
            ));
            std::fs::create_dir_all(logs.path().join(format!("work{i}"))).unwrap();
            wait_port(flight, "an executor's Flight service");
            wait_port(flight + 1, "an executor's gRPC service");
        }
        Cluster {
            scheduler,
            executors,
            url: format!("df://127.0.0.1:{port}"),
            logs,
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("--- {}\n", entry.path().display()));
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// TPC-H at SF 0.01 as Parquet and lineitem as CSV, generated once per test run.
fn tpch_data() -> PathBuf {
    // The tests of this file run in parallel threads: one generates, the others wait.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join("flowengine-cluster-tpch-sf0.01");
    for format in ["parquet", "csv"] {
        let out = dir.join(format);
        if TABLES
            .iter()
            .all(|t| out.join(format!("{t}.{format}")).exists())
        {
            continue;
        }
        let status = Command::new("tpchgen-cli")
            .args([format, "-s", "0.01", "-o"])
            .arg(&out)
            .arg("--overwrite")
            .status()
            .expect("tpchgen-cli (pip install tpchgen-cli) is required by tests/cluster.rs");
        assert!(status.success());
    }
    dir
}

fn tables_sql(dir: &Path) -> PathBuf {
    let path = dir.join("tables.sql");
    let text: String = TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/parquet/{t}.parquet';\n",
                dir.display()
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `flowengine sql` on the cluster (or in-process with `None`): (success, stdout, stderr).
fn sql(cluster: Option<&str>, init: &Path, query: &str) -> (bool, String, String) {
    let mut cmd = common::flowengine();
    if let Some(url) = cluster {
        cmd.args(["--cluster", url]);
    }
    let out = cmd
        .args(["sql", "--format", "csv", "--init"])
        .arg(init)
        .args(["-c", query])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write `text` to `path` and `flowengine run` it on the cluster at `url`.
fn run_on(url: &str, path: &Path, text: &str) -> std::process::Output {
    std::fs::write(path, text).unwrap();
    common::flowengine()
        .args(["--cluster", url, "run"])
        .arg(path)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap()
}

/// Rows as sorted vectors of cells, numbers compared with a tolerance (the order of a
/// distributed sum's additions differs from a single node's).
fn rows(csv: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    rows.sort();
    rows
}

fn same_results(a: &str, b: &str) -> Result<(), String> {
    let (a, b) = (rows(a), rows(b));
    if a.len() != b.len() {
        return Err(format!("{} rows vs {}", a.len(), b.len()));
    }
    for (ra, rb) in a.iter().zip(&b) {
        let same = ra.len() == rb.len()
            && ra.iter().zip(rb).all(|(x, y)| {
                x == y
                    || matches!((x.parse::<f64>(), y.parse::<f64>()),
                        (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0))
            });
        if !same {
            return Err(format!("row differs: {ra:?} vs {rb:?}"));
        }
    }
    Ok(())
}

#[test]
fn tpch_and_etl_on_the_cluster_match_single_node_and_it_survives_a_lost_executor() {
    let data = tpch_data();
    let work = tempfile::tempdir().unwrap();
    let init = tables_sql(&data);
    let mut cluster = Cluster::start();
    let url = cluster.url.clone();
    let url = url.as_str();

    // The 22 TPC-H queries: the same rows on the cluster as in one process.
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::repo("benches/tpch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 22);
    for file in &files {
        let query = std::fs::read_to_string(file).unwrap();
        let (ok, single, err) = sql(None, &init, &query);
        assert!(ok, "{}: single node failed: {err}", file.display());
        let (ok, distributed, err) = sql(Some(url), &init, &query);
        assert!(
            ok,
            "{}: cluster failed: {err}\n{}",
            file.display(),
            cluster.logs()
        );
        assert!(
            !rows(&single).is_empty() || file.ends_with("q15.sql"),
            "{single}"
        );
        if let Err(diff) = same_results(&single, &distributed) {
            panic!("{}: {diff}", file.display());
        }
    }

    // CSV -> cast/derive/filter -> Parquet, written by the executors.
    let out = work.path().join("etl");
    let etl = format!(
        "CREATE EXTERNAL TABLE li STORED AS CSV LOCATION '{}/csv/lineitem.csv';\n\
         COPY (SELECT l_orderkey, l_linenumber, CAST(l_quantity AS DOUBLE) * 2 AS q2, \
                      upper(l_shipmode) AS mode \
               FROM li WHERE l_quantity > 10) \
         TO '{}/' STORED AS PARQUET;\n",
        data.display(),
        out.display()
    );
    let run = run_on(url, &work.path().join("etl.sql"), &etl);
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        cluster.logs()
    );
    let check = work.path().join("check.sql");
    std::fs::write(
        &check,
        format!(
            "CREATE EXTERNAL TABLE li STORED AS CSV LOCATION '{}/csv/lineitem.csv';\n\
             CREATE EXTERNAL TABLE etl STORED AS PARQUET LOCATION '{}/';\n",
            data.display(),
            out.display()
        ),
    )
    .unwrap();
    let (ok, written, err) = sql(
        None,
        &check,
        "SELECT count(*), sum(q2), count(DISTINCT mode) FROM etl",
    );
    assert!(ok, "{err}");
    let (ok, expected, err) = sql(
        None,
        &check,
        "SELECT count(*), sum(CAST(l_quantity AS DOUBLE) * 2), count(DISTINCT upper(l_shipmode)) \
         FROM li WHERE l_quantity > 10",
    );
    assert!(ok, "{err}");
    same_results(&expected, &written).unwrap();

    // A table Ballista cannot ship is refused before anything is sent, naming it.
    let with_mem = work.path().join("with_mem.sql");
    std::fs::write(
        &with_mem,
        std::fs::read_to_string(&init).unwrap() + "CREATE TABLE mem AS VALUES (1);\n",
    )
    .unwrap();
    let (ok, _, err) = sql(
        Some(url),
        &with_mem,
        "SELECT * FROM nation JOIN mem ON n_nationkey = column1",
    );
    assert!(!ok);
    assert!(
        err.contains("table `mem` cannot be read on the cluster"),
        "{err}"
    );
    // Catalog tables of the process answer locally.
    let (ok, out_text, err) = sql(
        Some(url),
        &init,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'lineitem'",
    );
    assert!(ok && out_text.contains('1'), "{out_text}{err}");

    // Kill an executor while a query runs: the query completes (tasks retried on the other
    // executor) or fails with a clear error; either way the cluster serves the next query.
    // About 700 million joined pairs: several seconds on the cluster, so the kill lands mid-query.
    let heavy = "SELECT count(*) FROM lineitem a JOIN lineitem b \
                 ON a.l_suppkey % 5 = b.l_suppkey % 5 WHERE a.l_quantity + b.l_quantity > 20";
    let (ok, expected, err) = sql(None, &init, heavy);
    assert!(ok, "{err}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowengine"))
        .args(["--cluster", url, "sql", "--format", "csv", "--init"])
        .arg(&init)
        .args(["-c", heavy])
        .env_remove("FLOWENGINE_CONFIG")
        .env(
            "FLOWENGINE_STATE_DIR",
            std::env::temp_dir().join("flowengine-test-state"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the query ended before the executor was killed: the test needs a slower query"
    );
    let mut lost = cluster.executors.remove(0);
    lost.kill().unwrap();
    lost.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the query neither finished nor failed after an executor was lost\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if status.success() {
        same_results(&expected, &stdout).unwrap();
    } else {
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: ") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    eprintln!(
        "query during the executor loss: {}",
        if status.success() {
            "completed with the right result".to_string()
        } else {
            format!("failed cleanly: {}", stderr.trim())
        }
    );
    let (ok, after, err) = sql(Some(url), &init, "SELECT count(*) FROM nation");
    assert!(ok, "the cluster stopped serving: {err}\n{}", cluster.logs());
    assert!(after.contains("25"), "{after}");
}

/// An S3 table declared with an endpoint and credentials as secret references: the scheduler
/// lists it and the executors read and write it, each resolving the secrets from its own
/// `FLOWENGINE_SECRET_*` (the nodes have no `AWS_*` variables), and the options shown by
/// `system.settings` hold references, not values.
#[test]
fn object_store_tables_on_the_cluster() {
    let data = tpch_data();
    let moto = common::stores::start_moto();
    common::stores::create_bucket(moto.port, "lake");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let secrets = [
        ("FLOWENGINE_SECRET_S3_ID", "testing".to_string()),
        ("FLOWENGINE_SECRET_S3_KEY", "testing".to_string()),
    ];
    let cluster = Cluster::start_with(&secrets);
    let work = tempfile::tempdir().unwrap();
    // The object is uploaded once by a single node with its own credentials.
    let upload = work.path().join("upload.sql");
    std::fs::write(
        &upload,
        format!(
            "CREATE EXTERNAL TABLE local_orders STORED AS PARQUET \
             LOCATION '{}/parquet/orders.parquet';\n\
             COPY local_orders TO 's3://lake/orders/part-0.parquet';\n",
            data.display()
        ),
    )
    .unwrap();
    let uploaded = common::flowengine()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .arg("run")
        .arg(&upload)
        .output()
        .unwrap();
    assert!(
        uploaded.status.success(),
        "{}",
        String::from_utf8_lossy(&uploaded.stderr)
    );
    // The orders object as table `name`, its secret key from secret `key`.
    let declare = |name: &str, key: &str| {
        format!(
            "CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION 's3://lake/orders/' \
             OPTIONS ('aws.access_key_id' '${{secret:S3_ID}}', \
                      'aws.secret_access_key' '${{secret:{key}}}', \
                      'aws.region' 'us-east-1', 'aws.endpoint' '{endpoint}');\n"
        )
    };
    let init = work.path().join("s3.sql");
    std::fs::write(&init, declare("orders", "S3_KEY")).unwrap();
    // Clients (in one process or on the cluster) read through the table.
    let client = |cluster_url: Option<&str>, sql_text: &str| {
        let mut cmd = common::flowengine();
        if let Some(url) = cluster_url {
            cmd.args(["--cluster", url]);
        }
        cmd.envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .args(["sql", "--format", "csv", "--init"])
            .arg(&init)
            .args(["-c", sql_text])
            .timeout(Duration::from_secs(300))
            .output()
            .unwrap()
    };
    let query = "SELECT o_orderstatus, count(*), sum(o_totalprice) FROM orders \
                 WHERE o_orderdate >= DATE '1995-01-01' GROUP BY o_orderstatus";
    let single = client(None, query);
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let distributed = client(Some(&cluster.url), query);
    assert!(
        distributed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&distributed.stderr),
        cluster.logs()
    );
    let (single, distributed) = (
        String::from_utf8_lossy(&single.stdout),
        String::from_utf8_lossy(&distributed.stdout),
    );
    assert_eq!(rows(&single).len(), 3, "{single}");
    same_results(&single, &distributed).unwrap();

    // The executors write to the same bucket through the table's store.
    let copy = client(
        Some(&cluster.url),
        "COPY (SELECT o_orderkey, o_totalprice FROM orders WHERE o_orderstatus = 'F') \
         TO 's3://lake/finished/' STORED AS PARQUET",
    );
    assert!(
        copy.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&copy.stderr),
        cluster.logs()
    );
    let read_back = client(
        None,
        "CREATE EXTERNAL TABLE finished STORED AS PARQUET LOCATION 's3://lake/finished/'; \
         SELECT count(*) = (SELECT count(*) FROM orders WHERE o_orderstatus = 'F') FROM finished",
    );
    let text = String::from_utf8_lossy(&read_back.stdout);
    assert!(
        read_back.status.success() && text.contains("true"),
        "{text}{}",
        String::from_utf8_lossy(&read_back.stderr)
    );

    // Nodes resolve references from their own secrets: one only the client has fails there,
    // and the error names the store and the secret.
    let other = work.path().join("other.sql");
    std::fs::write(&other, declare("o2", "CLIENT_ONLY")).unwrap();
    let missing = common::flowengine()
        .args(["--cluster", &cluster.url, "sql", "--init"])
        .arg(&other)
        .args(["-c", "SELECT count(*) FROM o2"])
        .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FLOWENGINE_SECRET_CLIENT_ONLY", "testing")
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{err}");
    assert!(
        err.contains("CLIENT_ONLY") && err.contains("s3://lake") && !err.contains("testing"),
        "{err}"
    );

    // What travels to the nodes names the secrets, never their values.
    let settings = client(
        None,
        "SELECT name, value FROM system.settings WHERE name LIKE 'flowengine_stores.%'",
    );
    let text = String::from_utf8_lossy(&settings.stdout);
    assert!(
        text.contains("s3://lake")
            && text.contains("${secret:S3_KEY}")
            && !text.contains("testing"),
        "{text}"
    );
}

#[test]
fn connector_tables_are_read_by_the_executors() {
    let data = tpch_data();
    let table = format!("cluster_pg_{}", std::process::id());
    common::psql(&format!(
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} AS SELECT g AS id, g % 25 AS nation, (g * 1.5)::numeric(12,2) AS amount, \
                'name ' || g AS name FROM generate_series(1, 20000) g;"
    ));
    // Both the client and the nodes resolve PG_PASS; only the client has CLIENT_ONLY.
    let node_secrets = [(
        "FLOWENGINE_SECRET_PG_PASS",
        "trust-auth-ignores-it".to_string(),
    )];
    let cluster = Cluster::start_with(&node_secrets);
    let work = tempfile::tempdir().unwrap();
    let declare = |name: &str, connection: &str| {
        format!(
            "CREATE EXTERNAL TABLE {name} STORED AS POSTGRES LOCATION 'public.{table}' \
             OPTIONS ('connection' '{connection}');\n"
        )
    };
    let init = work.path().join("pg.sql");
    std::fs::write(
        &init,
        std::fs::read_to_string(tables_sql(&data)).unwrap()
            + &declare(
                "pg",
                "postgresql://postgres:${secret:PG_PASS}@127.0.0.1:5432/test",
            )
            + &declare(
                "pg_client_only",
                "postgresql://postgres:${secret:CLIENT_ONLY}@127.0.0.1:5432/test",
            )
            + &declare(
                "pg_literal",
                "postgresql://postgres:hunter2@127.0.0.1:5432/test",
            )
            + &format!(
                "CREATE EXTERNAL TABLE tolerant STORED AS CSV LOCATION '{}/csv/nation.csv' \
                 OPTIONS ('on_error' 'skip');\n",
                data.display()
            ),
    )
    .unwrap();
    let client = |cluster_url: Option<&str>, query: &str| {
        let mut cmd = common::flowengine();
        if let Some(url) = cluster_url {
            cmd.args(["--cluster", url]);
        }
        let out = cmd
            .env("FLOWENGINE_SECRET_PG_PASS", "trust-auth-ignores-it")
            .env("FLOWENGINE_SECRET_CLIENT_ONLY", "trust-auth-ignores-it")
            .args(["sql", "--format", "csv", "--init"])
            .arg(&init)
            .args(["-c", query])
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = cluster.url.as_str();
    for query in [
        // Filters and aggregates over the database table.
        "SELECT nation, count(*) AS n, sum(amount) AS total FROM pg WHERE id > 100 GROUP BY nation",
        // Joined with a Parquet table on the executors.
        "SELECT n_name, count(*) AS n, max(name) AS last FROM pg JOIN nation ON pg.nation = n_nationkey \
         WHERE amount < 9000 GROUP BY n_name",
        // A pushed-down filter the database evaluates, and a limit.
        "SELECT id, name FROM pg WHERE name LIKE 'name 1999%'",
        "SELECT count(*) AS n FROM (SELECT id FROM pg WHERE id > 50 LIMIT 7)",
    ] {
        let (ok, single, err) = client(None, query);
        assert!(ok, "{query}: single node failed: {err}");
        let (ok, distributed, err) = client(Some(url), query);
        assert!(ok, "{query}: cluster failed: {err}\n{}", cluster.logs());
        assert!(!rows(&single).is_empty(), "{query}: {single}");
        if let Err(diff) = same_results(&single, &distributed) {
            panic!("{query}: {diff}\n{single}\n{distributed}");
        }
    }
    // The executors open the table themselves: a secret only the client has is missing there,
    // and the error names it (never a value).
    let (ok, _, err) = client(Some(url), "SELECT count(*) FROM pg_client_only");
    assert!(
        !ok,
        "a table needing the client's own secret ran on the cluster"
    );
    assert!(err.contains("CLIENT_ONLY"), "{err}");
    assert!(!err.contains("trust-auth-ignores-it"), "{err}");
    // A credential written literally in SQL is not sent to the nodes.
    let (ok, _, err) = client(Some(url), "SELECT count(*) FROM pg_literal");
    assert!(!ok);
    assert!(
        err.contains("table `pg_literal` cannot be read on the cluster")
            && err.contains("literal credential"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // Writes to connector tables and tolerant readers stay with a single node, saying so.
    let (ok, _, err) = client(
        Some(url),
        "INSERT INTO pg SELECT id + 100000, nation, amount, name FROM pg WHERE id < 3",
    );
    assert!(
        !ok && err.contains("writing to table") && err.contains("pg"),
        "{err}"
    );
    let (ok, _, err) = client(Some(url), "SELECT count(*) FROM tolerant");
    assert!(
        !ok && err.contains("table `tolerant` cannot be read on the cluster")
            && err.contains("on_error"),
        "{err}"
    );
    // The cluster still serves.
    let (ok, out, err) = client(Some(url), "SELECT count(*) AS n FROM pg");
    assert!(ok, "{err}");
    assert_eq!(rows(&out), vec![vec!["20000".to_string()]]);
    common::psql(&format!("DROP TABLE IF EXISTS {table};"));
}

/// Every file under `dir`, relative names.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cluster_writes_commit_only_when_the_job_succeeds() {
    let data = tpch_data();
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good");
    let bad = work.path().join("bad");
    let pipeline = |name: &str, out: &Path, value: &str| {
        run_on(
            &cluster.url,
            &work.path().join(name),
            &format!(
                "CREATE EXTERNAL TABLE li STORED AS CSV LOCATION '{}/csv/lineitem.csv';\n\
                 SET datafusion.execution.soft_max_rows_per_output_file = 4000;\n\
                 SET datafusion.execution.target_partitions = 1;\n\
                 COPY (SELECT l_orderkey, l_linenumber, {value} AS v FROM li) \
                 TO '{}/' STORED AS PARQUET;\n",
                data.display(),
                out.display()
            ),
        )
    };
    // A job that succeeds: its files are in place under their final names, nothing staged.
    let run = pipeline("good.sql", &good, "l_quantity");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        cluster.logs()
    );
    let written = files_under(&good);
    assert!(written.len() > 1, "expected several files: {written:?}");
    assert!(
        written
            .iter()
            .all(|f| f.ends_with(".parquet") && !f.contains(".flowengine-")),
        "{written:?}"
    );
    let check = work.path().join("check.sql");
    std::fs::write(
        &check,
        format!(
            "CREATE EXTERNAL TABLE li STORED AS CSV LOCATION '{}/csv/lineitem.csv';\n\
             CREATE EXTERNAL TABLE good STORED AS PARQUET LOCATION '{}/';\n",
            data.display(),
            good.display()
        ),
    )
    .unwrap();
    let (ok, got, err) = sql(None, &check, "SELECT count(*), sum(v) FROM good");
    assert!(ok, "{err}");
    let (ok, expected, err) = sql(None, &check, "SELECT count(*), sum(l_quantity) FROM li");
    assert!(ok, "{err}");
    same_results(&expected, &got).unwrap();
    // A job that fails late (a cast of the last orders' comments, in the one task that also
    // writes: one partition), after files of the earlier rows were complete: none of them is
    // left, under its final name or staged.
    let run = pipeline(
        "bad.sql",
        &bad,
        "CASE WHEN l_orderkey > 50000 THEN CAST(l_comment AS INT) ELSE 0 END",
    );
    assert!(!run.status.success(), "the failing COPY succeeded");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("Cannot cast"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(files_under(&bad), Vec::<String>::new());
    // INSERT INTO a file table: a failing one adds nothing, a succeeding one commits its files.
    let insert = |name: &str, value: &str| {
        run_on(
            &cluster.url,
            &work.path().join(name),
            &format!(
                "CREATE EXTERNAL TABLE li STORED AS CSV LOCATION '{}/csv/lineitem.csv';\n\
                 CREATE EXTERNAL TABLE good STORED AS PARQUET LOCATION '{}/';\n\
                 SET datafusion.execution.soft_max_rows_per_output_file = 4000;\n\
                 SET datafusion.execution.target_partitions = 1;\n\
                 INSERT INTO good SELECT l_orderkey, l_linenumber, {value} FROM li;\n",
                data.display(),
                good.display()
            ),
        )
    };
    let run = insert(
        "bad_insert.sql",
        "CASE WHEN l_orderkey > 50000 THEN CAST(l_comment AS DECIMAL(15,2)) ELSE l_quantity END",
    );
    assert!(!run.status.success(), "the failing INSERT succeeded");
    assert_eq!(files_under(&good), written);
    let run = insert("insert.sql", "l_quantity");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let after = files_under(&good);
    assert!(after.len() > written.len(), "{after:?}");
    assert!(
        after.iter().all(|f| !f.contains(".flowengine-")),
        "{after:?}"
    );
    let (ok, got, err) = sql(None, &check, "SELECT count(*) FROM good");
    assert!(ok, "{err}");
    let (ok, expected, err) = sql(None, &check, "SELECT 2 * count(*) FROM li");
    assert!(ok, "{err}");
    same_results(&expected, &got).unwrap();
}
