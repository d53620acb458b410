//! Data quality checks end to end: every rule kind, WARN continues and is recorded, ERROR stops
//! the run before the sink commits, results land in `system.quality_results`.

mod common;

use common::*;

fn setup(dir: &std::path::Path) {
    std::fs::write(
        dir.join("orders.csv"),
        "id,customer,status,amount,updated_at\n\
         1,10,paid,5.0,2024-01-01T00:00:00\n\
         2,11,paid,7.5,2024-01-02T00:00:00\n\
         2,12,open,-1.0,2024-01-03T00:00:00\n\
         ,10,lost,3.0,2024-01-04T00:00:00\n",
    )
    .unwrap();
    std::fs::write(dir.join("customers.csv"), "id,name\n10,a\n11,b\n").unwrap();
}

const TABLES: &str = "CREATE EXTERNAL TABLE orders (id INT, customer INT, status VARCHAR, amount DOUBLE, updated_at TIMESTAMP) STORED AS CSV LOCATION 'orders.csv';\n\
CREATE EXTERNAL TABLE customers (id INT, name VARCHAR) STORED AS CSV LOCATION 'customers.csv';\n";

fn run(dir: &std::path::Path, body: &str) -> (bool, String, String) {
    let p = write_pipeline(dir, "p.sql", &format!("{TABLES}{body}"));
    let o = flowengine()
        .current_dir(dir)
        .env("FLOWENGINE_STATE_DIR", dir.join("state"))
        .args(["run", p.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn warn_checks_record_and_continue_error_checks_stop_before_the_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let (ok, stdout, stderr) = run(
        dir,
        "CREATE CHECK id_present ON orders EXPECT id IS NOT NULL WARN;\n\
         CREATE CHECK id_unique ON orders UNIQUE (id) WARN;\n\
         CREATE CHECK known_status ON orders EXPECT status IN ('paid', 'open') WARN DEAD_LETTER 'bad_status.json';\n\
         CREATE CHECK positive ON orders EXPECT amount BETWEEN 0 AND 100 WARN;\n\
         CREATE CHECK customer_exists ON orders EXPECT customer IN (SELECT id FROM customers) WARN;\n\
         CREATE CHECK volume ON orders ROW COUNT BETWEEN 1 AND 3 WARN;\n\
         CREATE CHECK recent ON orders FRESH updated_at WITHIN '1 day' WARN;\n\
         CREATE CHECK custom AS SELECT * FROM orders WHERE status = 'paid' AND amount > 7 WARN;\n\
         CREATE CHECK fine ON customers UNIQUE (id);\n\
         COPY orders TO 'out.parquet';\n\
         SELECT check_name, status, failing_rows FROM system.quality_results ORDER BY check_name;\n",
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("id_present on orders WARN 1 failing row(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("fine on customers passed"), "{stderr}");
    assert!(dir.join("out.parquet").exists());
    // The failing rows of known_status went to its dead-letter file.
    let dl = std::fs::read_to_string(dir.join("bad_status.json")).unwrap();
    assert_eq!(dl.lines().count(), 1, "{dl}");
    assert!(dl.contains("lost"), "{dl}");
    // Earlier runs' results are in the system table snapshot taken at the start of this run;
    // run again to read this run's.
    let _ = stdout;
    let (ok, stdout, stderr) = run(
        dir,
        "SELECT check_name, status, failing_rows FROM system.quality_results ORDER BY check_name;\n",
    );
    assert!(ok, "{stderr}");
    let expected = "check_name,status,failing_rows\n\
custom,warned,1\n\
customer_exists,warned,1\n\
fine,passed,0\n\
id_present,warned,1\n\
id_unique,warned,1\n\
known_status,warned,1\n\
positive,warned,1\n\
recent,warned,1\n\
volume,warned,1\n";
    assert_eq!(stdout, expected);

    // An ERROR check fails the run before the sink statement; nothing is written.
    let (ok, _, stderr) = run(
        dir,
        "CREATE CHECK id_present ON orders EXPECT id IS NOT NULL;\nCOPY orders TO 'out2.parquet';\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("check id_present on orders: 1 failing row(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("p.sql:3:1"), "{stderr}");
    assert!(!dir.join("out2.parquet").exists());

    // A malformed check is a clear error with its location.
    let (ok, _, stderr) = run(dir, "CREATE CHECK broken ON orders;\n");
    assert!(!ok);
    assert!(
        stderr.contains("p.sql:3:1") && stderr.contains("expected CREATE CHECK"),
        "{stderr}"
    );
}

#[test]
fn expect_checks_before_a_write_run_in_its_scan_and_see_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    // The write reads only the paid orders' ids; the checks still see all four rows.
    let (ok, _, stderr) = run(
        dir,
        "CREATE CHECK positive ON orders EXPECT amount BETWEEN 0 AND 100 WARN;\n\
         CREATE CHECK id_present ON orders EXPECT id IS NOT NULL WARN;\n\
         COPY (SELECT id FROM orders WHERE status = 'paid') TO 'paid.parquet';\n",
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("CHECK  positive: evaluated in the scan of the next write"),
        "{stderr}"
    );
    assert!(
        stderr.contains("positive on orders WARN 1 failing row(s) (in the next write's scan)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("id_present on orders WARN 1 failing row(s) (in the next write's scan)"),
        "{stderr}"
    );
    // The failing row is shown.
    assert!(stderr.contains("-1.0"), "{stderr}");
    assert_eq!(parquet_rows(&dir.join("paid.parquet")), 2);

    // A write that joins cannot promise to read every row: the check runs on its own first.
    let (ok, _, stderr) = run(
        dir,
        "CREATE CHECK positive ON orders EXPECT amount >= 0 WARN;\n\
         COPY (SELECT o.id, c.name FROM orders o JOIN customers c ON o.customer = c.id) TO 'joined.parquet';\n",
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("positive on orders WARN 1 failing row(s)")
            && !stderr.contains("(in the next write's scan)"),
        "{stderr}"
    );
    assert!(dir.join("joined.parquet").exists());

    // A failing ERROR check in the scan stops the write: nothing is committed, and an
    // INSERT into a file table is rolled back the same way.
    std::fs::create_dir_all(dir.join("sink")).unwrap();
    let (ok, _, stderr) = run(
        dir,
        "CREATE EXTERNAL TABLE sink (id INT, amount DOUBLE) STORED AS PARQUET LOCATION 'sink/';\n\
         CREATE CHECK positive ON orders EXPECT amount >= 0;\n\
         INSERT INTO sink SELECT id, amount FROM orders;\n",
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("p.sql:4:1")
            && stderr.contains("check positive on orders: 1 failing row(s)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.join("sink")).unwrap().count(), 0);

    // Every outcome is in the state store.
    let (ok, stdout, stderr) = run(
        dir,
        "SELECT check_name, status, failing_rows FROM system.quality_results ORDER BY check_name, status;\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "check_name,status,failing_rows\nid_present,warned,1\npositive,failed,1\npositive,warned,1\npositive,warned,1\n"
    );
}
