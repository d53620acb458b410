//! Cluster execution on Apache DataFusion Ballista: a scheduler and two executors, each a
//! separate `flowengine` process on loopback, run the 22 TPC-H queries (SF 0.01, Parquet) and
//! a CSV -> Parquet ETL with the same results as a single-node run; tables Ballista cannot ship
//! are refused with an error naming them; killing an executor during a query leaves a
//! cluster that keeps serving; and tables on an S3-compatible server (moto), declared with store
//! options and secret references, are read and written by the nodes. FlowEngine's own
//! connector tables and atomic cluster writes are in `cluster_tables.rs`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;

#[test]
fn tpch_and_etl_on_the_cluster_match_single_node_and_it_survives_a_lost_executor() {
    let data = tpch_data();
    let work = tempfile::tempdir().unwrap();
    let init = tables_sql(&data);
    // Executors log the tasks they start, so the test can wait for one instead of a fixed time.
    let mut cluster =
        Cluster::start_with(&[("FLOWENGINE_LOG", "warn,ballista_executor=info".to_string())]);
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

    // An in-memory table, which only this process holds, is read here and its rows travel with
    // the plan; so does a catalog table joined with cluster tables.
    let with_mem = work.path().join("with_mem.sql");
    std::fs::write(
        &with_mem,
        std::fs::read_to_string(&init).unwrap() + "CREATE TABLE mem AS VALUES (1), (7), (24);\n",
    )
    .unwrap();
    for query in [
        "SELECT n_name, column1 FROM nation JOIN mem ON n_nationkey = column1",
        "SELECT count(*) AS n FROM nation CROSS JOIN information_schema.schemata",
    ] {
        let (ok, expected, err) = sql(None, &with_mem, query);
        assert!(ok, "{err}");
        let (ok, distributed, err) = sql(Some(url), &with_mem, query);
        assert!(ok, "{query}: {err}\n{}", cluster.logs());
        assert!(!rows(&expected).is_empty());
        same_results(&expected, &distributed).unwrap();
    }
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
    // Wait until the executor about to be lost runs a task of this query.
    let before = cluster.executor_log(0).matches("Execute task").count();
    let started = Instant::now();
    while cluster.executor_log(0).matches("Execute task").count() == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the query ended before the executor was killed: the test needs a slower query"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "executor 0 started no task of the query\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
