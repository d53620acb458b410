//! FlowEngine's own tables on a Ballista cluster (scheduler and two executors on loopback):
//! connector tables (PostgreSQL here) are opened and read by the executors themselves, with the
//! refusals named; tables only the client can read (tolerant readers, consuming queues,
//! in-memory tables) are read by the client and shipped with the plan; and writes on the
//! cluster commit only when the whole job succeeds.

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
    // Writes to connector tables stay with a single node, saying so.
    let (ok, _, err) = client(
        Some(url),
        "INSERT INTO pg SELECT id + 100000, nation, amount, name FROM pg WHERE id < 3",
    );
    assert!(
        !ok && err.contains("writing to table") && err.contains("pg"),
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

/// `flowengine run` of `text`, on the cluster at `url` or in-process: (success, stdout, stderr).
fn run(url: Option<&str>, path: &Path, text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    std::fs::write(path, text).unwrap();
    let mut cmd = common::flowengine();
    if let Some(url) = url {
        cmd.args(["--cluster", url]);
    }
    let out = cmd
        .envs(env.iter().copied())
        .args(["run", "--format", "csv"])
        .arg(path)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tables_only_the_client_can_read_run_on_the_cluster() {
    let data = tpch_data();
    let cluster = Cluster::start();
    let url = cluster.url.as_str();
    let work = tempfile::tempdir().unwrap();
    // A CSV with 2,000 good rows and 20 bad ones (a word where a number belongs).
    let csv = work.path().join("in.csv");
    let mut text = String::from("id,nation,amount\n");
    for id in 0..2020u64 {
        if id % 101 == 7 {
            text.push_str(&format!("{id},x{id},1.0\n"));
        } else {
            text.push_str(&format!("{id},{},{}.25\n", id % 25, id % 1000));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let pipeline = |tag: &str| {
        format!(
            "CREATE EXTERNAL TABLE nation STORED AS PARQUET LOCATION '{data}/parquet/nation.parquet';\n\
             CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, nation BIGINT, amount DOUBLE) \
               STORED AS CSV LOCATION '{csv}' OPTIONS ('format.has_header' 'true', \
               'on_error' 'dead_letter', 'dead_letter_path' '{dir}/{tag}-dl.jsonl', \
               'dead_letter_table' 'bad_rows');\n\
             CREATE TABLE mem AS VALUES (0, 'zero'), (1, 'one'), (2, 'two');\n\
             COPY (SELECT n_name, count(*) AS n, sum(amount) AS total, max(column2) AS label \
                   FROM src JOIN nation ON src.nation = n_nationkey \
                   LEFT JOIN mem ON src.id % 3 = mem.column1 GROUP BY n_name) \
               TO '{dir}/{tag}/' STORED AS PARQUET;\n\
             SELECT (SELECT count(*) FROM src) AS good, (SELECT count(*) FROM bad_rows) AS bad, \
                    (SELECT count(*) FROM nation CROSS JOIN mem) AS pairs;\n",
            data = data.display(),
            csv = csv.display(),
            dir = work.path().display(),
        )
    };
    let (ok, single, err) = run(
        None,
        &work.path().join("single.sql"),
        &pipeline("single"),
        &[],
    );
    assert!(ok, "single node: {err}");
    let (ok, distributed, err) = run(
        Some(url),
        &work.path().join("cluster.sql"),
        &pipeline("cluster"),
        &[],
    );
    assert!(ok, "cluster: {err}\n{}", cluster.logs());
    // Good + bad = input on both, the bad rows counted and dead-lettered by the client.
    assert!(single.ends_with("good,bad,pairs\n2000,20,75\n"), "{single}");
    assert_eq!(single, distributed);
    assert!(
        err.contains("20 bad records dead-lettered to"),
        "the cluster run's summary: {err}"
    );
    let letters = std::fs::read_to_string(work.path().join("cluster-dl.jsonl")).unwrap();
    assert_eq!(letters.lines().count(), 20, "{letters}");
    // The written report equals the single node's.
    let check = work.path().join("check.sql");
    std::fs::write(
        &check,
        format!(
            "CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION '{0}/single/';\n\
             CREATE EXTERNAL TABLE b STORED AS PARQUET LOCATION '{0}/cluster/';\n",
            work.path().display()
        ),
    )
    .unwrap();
    let (ok, a, err) = sql(None, &check, "SELECT * FROM a");
    assert!(ok, "{err}");
    let (ok, b, err) = sql(None, &check, "SELECT * FROM b");
    assert!(ok, "{err}");
    assert_eq!(rows(&a).len(), 25, "{a}");
    same_results(&a, &b).unwrap();

    // Over cluster_inline_limit, the query fails naming the table and the setting, and the
    // cluster serves the next query.
    let (ok, _, err) = run(
        Some(url),
        &work.path().join("limit.sql"),
        &pipeline("limit"),
        &[("FLOWENGINE_CLUSTER_INLINE_LIMIT", "1KiB")],
    );
    assert!(!ok);
    assert!(
        err.contains("table `src`") && err.contains("cluster_inline_limit"),
        "{err}"
    );
    let (ok, out, err) = sql(
        Some(url),
        &tables_sql(&data),
        "SELECT count(*) AS n FROM nation",
    );
    assert!(
        ok && rows(&out) == vec![vec!["25".to_string()]],
        "{out}{err}"
    );

    // A consuming Redis stream read on the cluster: acknowledged once the run commits, and a
    // failed run's messages are delivered again to the next.
    let key = format!("fe_cluster_{}", std::process::id());
    let stream = format!(
        "CREATE EXTERNAL TABLE t (id BIGINT, name VARCHAR) STORED AS REDIS_STREAM \
         LOCATION 'redis://127.0.0.1:6379/{key}' OPTIONS ('format' 'fields');\n\
         CREATE EXTERNAL TABLE nation STORED AS PARQUET LOCATION '{}/parquet/nation.parquet';\n",
        data.display()
    );
    let publish = |from: u64, to: u64| {
        let (ok, _, err) = run(
            None,
            &work.path().join("publish.sql"),
            &format!(
                "{stream}INSERT INTO t (id, name) SELECT value, 'row ' || value FROM range({from}, {to});\n"
            ),
            &[],
        );
        assert!(ok, "{err}");
    };
    let peek = || {
        let (ok, out, err) = run(
            None,
            &work.path().join("peek.sql"),
            &format!("{stream}SELECT count(*) AS n FROM t;\n"),
            &[],
        );
        assert!(ok, "{err}");
        out
    };
    publish(0, 3000);
    let out_dir = work.path().display();
    let (ok, written, err) = run(
        Some(url),
        &work.path().join("consume.sql"),
        &format!(
            "{stream}COPY (SELECT id, name, n_name FROM t JOIN nation ON id % 25 = n_nationkey) \
             TO '{out_dir}/stream/' STORED AS PARQUET;\n\
             CREATE EXTERNAL TABLE written STORED AS PARQUET LOCATION '{out_dir}/stream/';\n\
             SELECT count(*) AS n, count(DISTINCT id) AS ids FROM written;\n"
        ),
        &[],
    );
    assert!(ok, "{err}\n{}", cluster.logs());
    assert!(written.ends_with("n,ids\n3000,3000\n"), "{written}");
    assert!(peek().ends_with("n\n0\n"), "every message was acknowledged");
    publish(3000, 3500);
    let (ok, _, _) = run(
        Some(url),
        &work.path().join("fail.sql"),
        &format!(
            "{stream}COPY (SELECT id FROM t) TO '{out_dir}/failed/' STORED AS PARQUET;\n\
             SELECT * FROM no_such_table;\n"
        ),
        &[],
    );
    assert!(!ok);
    let (ok, again, err) = run(
        Some(url),
        &work.path().join("again.sql"),
        &format!(
            "{stream}COPY (SELECT id, _redelivered FROM t) TO '{out_dir}/again/' STORED AS PARQUET;\n\
             CREATE EXTERNAL TABLE again STORED AS PARQUET LOCATION '{out_dir}/again/';\n\
             SELECT count(*) AS n, count(*) FILTER (WHERE _redelivered) AS r, min(id) AS lo, \
                    max(id) AS hi FROM again;\n"
        ),
        &[],
    );
    assert!(ok, "{err}\n{}", cluster.logs());
    assert!(again.ends_with("n,r,lo,hi\n500,500,3000,3499\n"), "{again}");
    assert!(peek().ends_with("n\n0\n"));
    let _ = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "DEL", &key])
        .output();
}
