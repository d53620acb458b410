//! FlowEngine's own tables on a Ballista cluster (scheduler and two executors on loopback):
//! connector tables (PostgreSQL here) are opened and read by the executors themselves, with the
//! refusals named; and writes on the cluster commit only when the whole job succeeds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::*;

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
