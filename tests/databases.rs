//! Databases as sources and sinks, against the real servers on this machine: PostgreSQL
//! (127.0.0.1:5432, database `test`), MariaDB (127.0.0.1:3306, root, database `test`) and SQLite
//! files. Each test loads its data with the database's own client, reads and writes it through
//! `flowengine run`, and checks the result with the client again. Tables get unique names and
//! are dropped at the end.

mod common;

use std::path::Path;

use common::databases::{Backend, MY_URL, PG_URL, unique};
use common::{flowengine, psql, write_pipeline};
use predicates::prelude::*;

/// Run SQL with the `mariadb` client.
fn mysql(sql: &str) -> String {
    Backend::mariadb().exec(sql)
}

fn sqlite(db: &Path, sql: &str) -> String {
    common::databases::sqlite_file(db, sql)
}

/// Drops the named tables when the test ends, pass or fail.
struct Cleanup(Box<dyn Fn()>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn run_ok(pipeline: &Path) -> String {
    let out = flowengine()
        .arg("run")
        .arg(pipeline)
        .args(["--format", "csv"])
        .assert()
        .success()
        .get_output()
        .clone();
    String::from_utf8(out.stdout).unwrap()
}

/// A million rows made in the database (`id`, `amount = id % 1000`, `region = id % 7`), joined
/// with a Parquet dimension by `flowengine run`, written into a new table of the same database,
/// and checked there with the database's own client.
fn million_rows_join_parquet_and_write_back(db: &Backend) {
    let src = db.table("fe_src");
    let dst = db.table("fe_dst");
    db.exec(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, amount INT, region INT);
         INSERT INTO {src} SELECT n, n % 1000, n % 7 FROM ({}) s;
         CREATE TABLE {dst} (id BIGINT PRIMARY KEY, amount INT, region_name VARCHAR(20));",
        db.series(1_000_000)
    ));
    let dir = tempfile::tempdir().unwrap();
    let dim = dir.path().join("regions.parquet");
    let sql = format!(
        "COPY (SELECT column1 AS region, column2 AS region_name FROM (VALUES (0,'north'),(1,'south'),(2,'east'),(3,'west'),(4,'centre'),(5,'islands'),(6,'abroad'))) TO '{dim}';
CREATE EXTERNAL TABLE regions STORED AS PARQUET LOCATION '{dim}';
{};
{};
INSERT INTO dst SELECT s.id, s.amount, r.region_name FROM src s JOIN regions r ON s.region = r.region;
SELECT count(*) AS n, sum(amount) AS total, count(DISTINCT region_name) AS regions FROM dst;
",
        db.external("src", &src),
        db.external("dst", &dst),
        dim = dim.display()
    );
    let out = run_ok(&write_pipeline(dir.path(), "load.sql", &sql));
    assert_eq!(out.trim(), "n,total,regions\n1000000,499500000,7");
    assert_eq!(
        db.exec(&format!(
            "SELECT count(*), sum(amount), min(region_name) FROM {dst}"
        )),
        "1000000|499500000|abroad"
    );
}

#[test]
fn postgres_million_rows_join_parquet_and_write_back() {
    million_rows_join_parquet_and_write_back(&Backend::postgres());
}

#[test]
fn mariadb_million_rows_join_parquet_and_write_back() {
    million_rows_join_parquet_and_write_back(&Backend::mariadb());
}

#[test]
fn sqlite_million_rows_join_parquet_and_write_back() {
    million_rows_join_parquet_and_write_back(&Backend::sqlite());
}

/// A load that fails part-way leaves the target exactly as it was (one transaction), and an
/// upsert on the key makes a reload idempotent.
#[test]
fn postgres_sink_is_transactional_and_upserts() {
    let dst = unique("fe_tx");
    let d = dst.clone();
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP TABLE IF EXISTS {d}"));
    }));
    psql(&format!(
        "CREATE TABLE {dst} (id int PRIMARY KEY, v text NOT NULL); INSERT INTO {dst} VALUES (1, 'old')"
    ));
    let dir = tempfile::tempdir().unwrap();
    // Row 150000 has a NULL `v`: the database rejects it after earlier batches were sent.
    let failing = write_pipeline(
        dir.path(),
        "fail.sql",
        &format!(
            "CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{dst}' OPTIONS ('connection' '{PG_URL}');
INSERT INTO dst SELECT CAST(value + 1 AS INT) AS id, CASE WHEN value = 150000 THEN NULL ELSE 'new' END AS v FROM generate_series(1, 200000);"
        ),
    );
    flowengine()
        .arg("run")
        .arg(&failing)
        .assert()
        .failure()
        .stderr(predicate::str::contains("fail.sql:2"));
    assert_eq!(
        psql(&format!("SELECT count(*), min(v) FROM {dst}")),
        "1|old"
    );

    let upsert = write_pipeline(
        dir.path(),
        "upsert.sql",
        &format!(
            "CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{dst}' OPTIONS ('connection' '{PG_URL}', 'on_conflict' 'upsert:id');
INSERT INTO dst SELECT CAST(value % 3 + 1 AS INT) AS id, 'v' || CAST(value AS VARCHAR) AS v FROM generate_series(1, 9);"
        ),
    );
    // Each key comes three times in the one insert (PostgreSQL refuses to update a row twice in
    // one statement): the last row of each key wins, run after run.
    for _ in 0..2 {
        flowengine().arg("run").arg(&upsert).assert().success();
    }
    // Plain appends go through COPY; upserts through INSERT ... ON CONFLICT.
    let explain = |opts: &str| {
        let p = write_pipeline(
            dir.path(),
            "explain.sql",
            &format!(
                "CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{dst}' OPTIONS ('connection' '{PG_URL}'{opts});
EXPLAIN INSERT INTO dst SELECT 9 AS id, 'x' AS v;"
            ),
        );
        run_ok(&p)
    };
    assert!(explain("").contains("PostgresCopySink"), "{}", explain(""));
    let upsert_plan = explain(", 'on_conflict' 'upsert:id'");
    assert!(upsert_plan.contains("PostgresDataSink"), "{upsert_plan}");
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM {dst}"
        )),
        "1=v9,2=v7,3=v8",
        "each key's last row of the insert wins"
    );
}

/// PostgreSQL's own message, SQLSTATE, detail and hint reach the user on every path: connect,
/// the COPY sink, INSERT ... ON CONFLICT through the providers crate (which said `db error`).
#[test]
fn postgres_errors_carry_the_servers_message() {
    let dst = unique("fe_err");
    let d = dst.clone();
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP TABLE IF EXISTS {d}"));
    }));
    psql(&format!(
        "CREATE TABLE {dst} (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0))"
    ));
    let dir = tempfile::tempdir().unwrap();
    let fails = |name: &str, options: &str, statement: &str, expected: &[&str]| {
        let p = write_pipeline(
            dir.path(),
            name,
            &format!(
                "CREATE EXTERNAL TABLE dst STORED AS POSTGRES LOCATION '{dst}' OPTIONS ({options});\n{statement}\n"
            ),
        );
        let out = flowengine()
            .arg("run")
            .arg(&p)
            .assert()
            .failure()
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        for e in expected {
            assert!(stderr.contains(e), "{name}: `{e}` missing in:\n{stderr}");
        }
        assert!(!stderr.contains(": db error"), "{name}: {stderr}");
    };
    let pg = format!("'connection' '{PG_URL}'");
    fails(
        "no_db.sql",
        "'connection' 'postgresql://postgres@127.0.0.1:5432/fe_no_such_db'",
        "SELECT 1;",
        &[
            "database \"fe_no_such_db\" does not exist",
            "SQLSTATE 3D000",
        ],
    );
    fails(
        "no_role.sql",
        "'connection' 'postgresql://fe_no_such_role@127.0.0.1:5432/test'",
        "SELECT 1;",
        &["role \"fe_no_such_role\" does not exist", "SQLSTATE 28000"],
    );
    // Appends go through COPY.
    fails(
        "check.sql",
        &pg,
        "INSERT INTO dst VALUES (1, -1);",
        &[
            "violates check constraint",
            "SQLSTATE 23514",
            "DETAIL: Failing row",
        ],
    );
    // Upserts go through the providers crate's INSERT ... ON CONFLICT.
    fails(
        "upsert_check.sql",
        &format!("{pg}, 'on_conflict' 'upsert:id'"),
        "INSERT INTO dst VALUES (1, -5);",
        &["violates check constraint", "SQLSTATE 23514"],
    );
    fails(
        "no_unique.sql",
        &format!("{pg}, 'on_conflict' 'upsert:v'"),
        "INSERT INTO dst VALUES (1, 1);",
        &["ON CONFLICT", "SQLSTATE 42P10"],
    );
}

/// With federation, a join and aggregate over two tables of one database runs in the database:
/// the plan holds one federated SQL scan and no DataFusion join.
#[test]
fn postgres_join_and_aggregate_are_pushed_down() {
    let orders = unique("fe_orders");
    let customers = unique("fe_customers");
    let (o2, c2) = (orders.clone(), customers.clone());
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!(
            "DROP TABLE IF EXISTS {o2}; DROP TABLE IF EXISTS {c2}"
        ));
    }));
    psql(&format!(
        "CREATE TABLE {customers} (id int PRIMARY KEY, name text);
         INSERT INTO {customers} VALUES (1, 'ann'), (2, 'bob');
         CREATE TABLE {orders} (id int, customer_id int, amount numeric(10,2));
         INSERT INTO {orders} VALUES (1, 1, 10.50), (2, 1, 4.25), (3, 2, 7.00);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE orders STORED AS POSTGRES LOCATION '{orders}' OPTIONS ('connection' '{PG_URL}');
CREATE EXTERNAL TABLE customers STORED AS POSTGRES LOCATION '{customers}' OPTIONS ('connection' '{PG_URL}');
EXPLAIN SELECT c.name || '!' AS name, sum(o.amount) AS total FROM orders o JOIN customers c ON o.customer_id = c.id WHERE o.amount > 5 GROUP BY c.name;
"
    );
    let out = run_ok(&write_pipeline(dir.path(), "explain.sql", &sql));
    let physical = out
        .split("physical_plan")
        .nth(1)
        .unwrap_or_else(|| panic!("no physical plan in:\n{out}"));
    assert!(
        physical.contains("VirtualExecutionPlan")
            || physical.contains("SQLExecutor")
            || physical.contains("sql="),
        "{out}"
    );
    assert!(physical.to_uppercase().contains("JOIN"), "{out}");
    assert!(physical.to_uppercase().contains("GROUP BY"), "{out}");
    // `||` (planned as the bounded string_concat) goes to the database as `||`.
    assert!(physical.contains("|| '!'"), "{out}");
    assert!(
        !physical.contains("HashJoinExec"),
        "join ran in DataFusion:\n{out}"
    );

    let result = write_pipeline(
        dir.path(),
        "result.sql",
        &sql.replace("EXPLAIN SELECT", "SELECT")
            .replace("GROUP BY c.name;", "GROUP BY c.name ORDER BY 1;"),
    );
    assert_eq!(run_ok(&result).trim(), "name,total\nann!,10.50\nbob!,7.00");
}

/// Passwords come from `${secret:NAME}`; they are never in output, errors or `--explain`.
#[test]
fn secrets_resolve_at_connect_time_and_are_never_printed() {
    let t = unique("fe_secret");
    let t2 = t.clone();
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP TABLE IF EXISTS {t2}"));
    }));
    psql(&format!(
        "CREATE TABLE {t} (x int); INSERT INTO {t} VALUES (42)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let ok = write_pipeline(
        dir.path(),
        "ok.sql",
        &format!(
            "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION '{t}' OPTIONS ('connection' 'postgresql://postgres:${{secret:PG_PASS}}@127.0.0.1:5432/test');
SELECT x FROM t;"
        ),
    );
    let out = flowengine()
        .env("FLOWENGINE_SECRET_PG_PASS", "hunter2-very-secret")
        .arg("run")
        .arg(&ok)
        .args(["--format", "csv", "--explain"])
        .assert()
        .success()
        .get_output()
        .clone();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("42"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");

    // Undefined secret: the error names it.
    flowengine()
        .arg("run")
        .arg(&ok)
        .assert()
        .failure()
        .stderr(predicate::str::contains("FLOWENGINE_SECRET_PG_PASS"));

    // Unreachable server: a clear error within the connect timeout, without the password.
    let down = write_pipeline(
        dir.path(),
        "down.sql",
        "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION 'x' OPTIONS ('connection' 'postgresql://postgres:${secret:PG_PASS}@127.0.0.1:1/test', 'connect_timeout' '3');",
    );
    flowengine()
        .env("FLOWENGINE_SECRET_PG_PASS", "hunter2-very-secret")
        .arg("run")
        .arg(&down)
        .assert()
        .failure()
        .stderr(predicate::str::contains("PostgreSQL table `x`"))
        .stderr(predicate::str::contains("hunter2").not());

    // A misspelt option is named, not ignored.
    let typo = write_pipeline(
        dir.path(),
        "typo.sql",
        &format!(
            "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION '{t}' OPTIONS ('connection' '{PG_URL}', 'pool_sise' '3');"
        ),
    );
    flowengine()
        .arg("run")
        .arg(&typo)
        .assert()
        .failure()
        .stderr(predicate::str::contains("pool_sise"));
}

fn run_json(pipeline: &Path) -> String {
    let out = flowengine()
        .arg("run")
        .arg(pipeline)
        .args(["--format", "json", "-q"])
        .assert()
        .success()
        .get_output()
        .clone();
    String::from_utf8(out.stdout).unwrap()
}

/// A table of every common type of one database (one row of values, one of NULLs), read by
/// `flowengine run` and written back into a table of the same definition.
struct TypeCase<'a> {
    /// Columns of the source table.
    columns: &'a str,
    /// The row of values (the second row is all NULLs).
    values: &'a str,
    /// What `flowengine run` selects of the table.
    select: &'a str,
    /// The column the rows are ordered by.
    order: &'a str,
    /// The first row as `flowengine run --format json` shows it.
    read: &'a str,
    /// What to compare of source and copy (`{t}` is the table), in the database's text form.
    compare: &'a str,
}

/// Read, then write back: the database's own text of each row is unchanged, NULLs included.
fn type_round_trip(db: &Backend, case: &TypeCase<'_>) -> tempfile::TempDir {
    let src = db.table("fe_types");
    let dst = db.table("fe_types_out");
    let nulls = match db.kind {
        common::databases::Kind::Postgres | common::databases::Kind::Sqlite => {
            format!("INSERT INTO {src} DEFAULT VALUES")
        }
        common::databases::Kind::MariaDb => format!("INSERT INTO {src} () VALUES ()"),
    };
    db.exec(&format!(
        "CREATE TABLE {src} ({columns}); INSERT INTO {src} VALUES ({}); {nulls}; CREATE TABLE {dst} ({columns});",
        case.values,
        columns = case.columns,
    ));
    let dir = tempfile::tempdir().unwrap();
    let defs = format!("{};\n{};\n", db.external("t", &src), db.external("o", &dst));
    let read = run_json(&write_pipeline(
        dir.path(),
        "read.sql",
        &format!(
            "{defs}SELECT {} FROM t ORDER BY {} NULLS LAST;",
            case.select, case.order
        ),
    ));
    assert_eq!(read.trim(), format!("{}\n{{}}", case.read));
    flowengine()
        .arg("run")
        .arg(write_pipeline(
            dir.path(),
            "write.sql",
            &format!("{defs}INSERT INTO o SELECT * FROM t;"),
        ))
        .assert()
        .success();
    let rows = |t: &str| db.exec(&case.compare.replace("{t}", t));
    assert_eq!(rows(&dst), rows(&src));
    // The definitions stay usable for a backend's own further checks.
    std::fs::write(dir.path().join("defs.sql"), defs).unwrap();
    dir
}

/// Every common PostgreSQL type, including an enum, arrays and intervals; their Arrow types too.
#[test]
fn postgres_type_mapping_both_ways() {
    let db = Backend::postgres();
    let mood = unique("fe_mood");
    // Dropped after the tables that use it (`db`, declared before, drops its tables later:
    // CASCADE takes the columns with it).
    let _mood = Cleanup(Box::new({
        let mood = mood.clone();
        move || {
            let _ = Backend::postgres().try_exec(&format!("DROP TYPE IF EXISTS {mood} CASCADE"));
        }
    }));
    psql(&format!(
        "CREATE TYPE {mood} AS ENUM ('sad', 'ok', 'happy')"
    ));
    let dir = type_round_trip(
        &db,
        &TypeCase {
            columns: &format!(
                "i2 smallint, i4 int, i8 bigint, n numeric(12,3), f4 real, f8 double precision,
                 t text, vc varchar(10), b boolean, d date, tm time, ts timestamp, tstz timestamptz,
                 iv interval, j json, jb jsonb, u uuid, by bytea, ia int[], ta text[], e {mood}"
            ),
            values: "-2, 40000, 9000000000, 12345.678, 1.5, 2.25, 'héllo', 'vc', true,
                '2024-02-29', '13:14:15.123456', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05+02',
                '1 year 2 mons 3 days 04:05:06', '{\"a\":1}', '{\"b\": [1, 2]}',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef', '{1,2,3}', '{x,y}', 'happy'",
            select: "*",
            order: "i2",
            read: r#"{"i2":-2,"i4":40000,"i8":9000000000,"n":12345.678,"f4":1.5,"f8":2.25,"t":"héllo","vc":"vc","b":true,"d":"2024-02-29","tm":"13:14:15.123456","ts":"2024-01-02T03:04:05.678901","tstz":"2024-01-02T01:04:05Z","iv":"14 mons 3 days 4 hours 5 mins 6.000000000 secs","j":"{\"a\":1}","jb":"{\"b\": [1, 2]}","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","by":"deadbeef","ia":[1,2,3],"ta":["x","y"],"e":"happy"}"#,
            compare: "SELECT string_agg(x::text, E'\\n' ORDER BY x.i2 NULLS LAST) FROM {t} x",
        },
    );
    let defs = std::fs::read_to_string(dir.path().join("defs.sql")).unwrap();
    let types = run_json(&write_pipeline(
        dir.path(),
        "types.sql",
        &format!(
            "{defs}SELECT arrow_typeof(i2) AS i2, arrow_typeof(n) AS n, arrow_typeof(tstz) AS tstz, arrow_typeof(iv) AS iv, arrow_typeof(ia) AS ia, arrow_typeof(e) AS e FROM t LIMIT 1;"
        ),
    ));
    assert_eq!(
        types.trim(),
        r#"{"i2":"Int16","n":"Decimal128(12, 3)","tstz":"Timestamp(ns, \"UTC\")","iv":"Interval(MonthDayNano)","ia":"List(Int32)","e":"Utf8"}"#
    );
}

/// Every common MySQL/MariaDB type; `BOOLEAN` is MySQL's `TINYINT(1)` and reads as a number.
#[test]
fn mariadb_type_mapping_both_ways() {
    type_round_trip(
        &Backend::mariadb(),
        &TypeCase {
            columns: "i1 TINYINT, i2 SMALLINT, i4 INT, i8 BIGINT, u8 BIGINT UNSIGNED, n DECIMAL(12,3),
                f4 FLOAT, f8 DOUBLE, vc VARCHAR(20), t TEXT, b BOOLEAN, d DATE, tm TIME, dt DATETIME(6),
                ts TIMESTAMP NULL, j JSON, bl BLOB, vb VARBINARY(10), e ENUM('sad','ok','happy')",
            values: "-1, -2, 40000, 9000000000, 18000000000000000000, 12345.678, 1.5, 2.25,
                'héllo', 'text', true, '2024-02-29', '13:14:15', '2024-01-02 03:04:05.678901',
                '2024-01-02 03:04:05', '{\"a\": 1}', x'DEADBEEF', x'CAFE', 'happy'",
            select: "*",
            order: "i1",
            read: r#"{"i1":-1,"i2":-2,"i4":40000,"i8":9000000000,"u8":18000000000000000000,"n":12345.678,"f4":1.5,"f8":2.25,"vc":"héllo","t":"text","b":1,"d":"2024-02-29","tm":"13:14:15","dt":"2024-01-02T03:04:05.678901","ts":"2024-01-02T03:04:05","j":"{\"a\": 1}","bl":"deadbeef","vb":"cafe","e":"happy"}"#,
            compare: "SELECT *, HEX(bl), HEX(vb) FROM {t} ORDER BY i1 IS NULL, i1",
        },
    );
}

/// SQLite's storage classes: integers, reals, text, blobs, booleans; dates and decimals as SQLite
/// keeps them (text and REAL). Written back, the values and their storage classes match.
#[test]
fn sqlite_type_mapping_both_ways() {
    type_round_trip(
        &Backend::sqlite(),
        &TypeCase {
            columns: "i INTEGER, r REAL, s TEXT, bl BLOB, n DECIMAL(10,2), d DATE, dt DATETIME, b BOOLEAN, v VARCHAR(10)",
            values: "9000000000, 2.5, 'héllo', x'DEADBEEF', 12.34, '2024-02-29', '2024-01-02 03:04:05', 1, 'vc'",
            select: "*, CAST(d AS DATE) AS as_date",
            order: "i",
            read: r#"{"i":9000000000,"r":2.5,"s":"héllo","bl":"deadbeef","n":12.34,"d":"2024-02-29","dt":"2024-01-02 03:04:05","b":true,"v":"vc","as_date":"2024-02-29"}"#,
            compare: "SELECT i, r, s, hex(bl), n, d, dt, b, v, typeof(i), typeof(r), typeof(s), typeof(bl), typeof(n), typeof(d) FROM {t} ORDER BY i IS NULL, i",
        },
    );
}

/// Queries using DataFusion's own functions over a database table run (in DataFusion, with the
/// scan still pushed down) instead of being sent to a database that lacks them; limits and
/// views over database tables unparse to valid SQL.
#[test]
fn federation_falls_back_for_datafusion_functions() {
    let t = unique("fe_fed");
    let t2 = t.clone();
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP TABLE IF EXISTS {t2}"));
    }));
    psql(&format!(
        "CREATE TABLE {t} (id int, s text, at timestamp); INSERT INTO {t} VALUES (1, 'a', '2024-01-01 10:07'), (2, 'b', '2024-01-01 10:31')"
    ));
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION '{t}' OPTIONS ('connection' '{PG_URL}');
CREATE VIEW v AS SELECT id AS k, upper(s) AS u FROM t;
CREATE TABLE results AS
  SELECT 'typeof' AS q, arrow_typeof(id) AS r FROM t WHERE id = 1
  UNION ALL SELECT 'bin', CAST(date_bin(INTERVAL '15 minutes', at) AS VARCHAR) FROM t WHERE id = 2
  UNION ALL SELECT 'limit', (SELECT upper(s) FROM t ORDER BY id LIMIT 1)
  UNION ALL SELECT 'view', CAST((SELECT max(k) FROM v WHERE u = 'B') AS VARCHAR);
SELECT q, r FROM results ORDER BY q;"
    );
    let out = run_ok(&write_pipeline(dir.path(), "fed.sql", &sql));
    assert_eq!(
        out.trim(),
        "q,r\nbin,2024-01-01T10:30:00\nlimit,A\ntypeof,Int32\nview,2"
    );
}

/// A TCP proxy to PostgreSQL that drops its first `drop_first` connections: a server that
/// fails the first requests, then recovers.
fn flaky_proxy(drop_first: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::copy;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if counter.fetch_add(1, Ordering::SeqCst) < drop_first {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect("127.0.0.1:5432") else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, accepted)
}

/// Connecting retries transient failures with backoff (a server dropping the first connections
/// is reached), gives up on a server that is down with a clear error after the configured
/// attempts, and a circuit breaker then fails further calls to it fast.
#[test]
fn connections_retry_back_off_and_break_the_circuit() {
    let t = unique("fe_retry");
    let t2 = t.clone();
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP TABLE IF EXISTS {t2}"));
    }));
    psql(&format!(
        "CREATE TABLE {t} (x int); INSERT INTO {t} VALUES (1), (2)"
    ));
    let dir = tempfile::tempdir().unwrap();

    let (port, accepted) = flaky_proxy(3);
    let flaky = write_pipeline(
        dir.path(),
        "flaky.sql",
        &format!(
            "CREATE EXTERNAL TABLE t STORED AS POSTGRES LOCATION '{t}'
OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:{port}/test', 'sslmode' 'disable', 'retry_backoff_ms' '50');
SELECT sum(x) AS s FROM t;"
        ),
    );
    let out = flowengine()
        .arg("run")
        .arg(&flaky)
        .args(["--format", "csv"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s\n3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed transiently; retrying"), "{stderr}");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) > 3);

    // A server that is down: retried with backoff until its breaker opens, then a clear error.
    // (Later calls to an open breaker fail at once: see the unit tests in resilience.rs.)
    let down = write_pipeline(
        dir.path(),
        "down.sql",
        "CREATE EXTERNAL TABLE a STORED AS POSTGRES LOCATION 'a'
  OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:1/test', 'retries' '2', 'retry_backoff_ms' '20', 'circuit_failures' '2', 'circuit_cooldown_secs' '60');
CREATE EXTERNAL TABLE b STORED AS POSTGRES LOCATION 'b'
  OPTIONS ('connection' 'postgresql://postgres@127.0.0.1:1/test', 'retries' '2', 'retry_backoff_ms' '20', 'circuit_failures' '2', 'circuit_cooldown_secs' '60');
",
    );
    let out = flowengine()
        .arg("sql")
        .arg("--init")
        .arg(&down)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Two failed attempts opened the breaker (circuit_failures 2): the third attempt was not
    // made, and the error gives both the cause and the breaker's state.
    assert!(
        stderr.contains("connecting to PostgreSQL failed after 2 attempts: ")
            && stderr.contains("Cannot connect to PostgreSQL on 127.0.0.1:1")
            && stderr.contains("circuit open for postgresql://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("circuit opened"), "{stderr}");
}

/// Tables declared with columns are created when missing, in the database file itself (the
/// SQLite example), and a rerun upserts instead of duplicating.
#[test]
fn sqlite_example_creates_the_table_in_the_file_and_reruns_idempotently() {
    let out = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        flowengine()
            .arg("run")
            .arg(common::repo("sql-examples/sqlite_load.sql"))
            .arg("--var")
            .arg(format!("OUT_DIR={}", out.path().display()))
            .assert()
            .success();
    }
    let csv = std::fs::read_to_string(common::repo("sql-examples/data/customers.csv")).unwrap();
    assert_eq!(
        sqlite(
            &out.path().join("shop.sqlite"),
            "SELECT count(*) FROM customers"
        ),
        (csv.lines().count() - 1).to_string()
    );
}

#[test]
fn slow_queries_fail_at_the_statement_timeout() {
    let t = unique("fe_slow");
    let (t2, t3) = (t.clone(), t.clone());
    let _cleanup = Cleanup(Box::new(move || {
        let _ = psql(&format!("DROP VIEW IF EXISTS {t2}"));
        mysql(&format!("DROP VIEW IF EXISTS {t2}"));
    }));
    // Views that take 10 s to produce one row. The error messages can only come from the
    // timeouts (PostgreSQL's cancellation, FlowEngine's abandon); no wall-clock bound, which a
    // loaded CI machine broke.
    psql(&format!(
        "CREATE VIEW {t} AS SELECT 1 AS x FROM pg_sleep(10)"
    ));
    mysql(&format!("CREATE VIEW {t3} AS SELECT SLEEP(10) AS x"));
    let dir = tempfile::tempdir().unwrap();
    for (kind, url, message) in [
        ("POSTGRES", PG_URL, "statement timeout"),
        (
            "MYSQL",
            MY_URL,
            "ran longer than statement_timeout (300 ms)",
        ),
    ] {
        // A scan, and the same through federation (an aggregate in the database).
        for query in ["SELECT x FROM slow", "SELECT max(x) FROM slow"] {
            let sql = format!(
                "CREATE EXTERNAL TABLE slow STORED AS {kind} LOCATION '{t}'
  OPTIONS ('connection' '{url}', 'statement_timeout' '300');
{query};"
            );
            let p = write_pipeline(dir.path(), "slow.sql", &sql);
            flowengine()
                .arg("run")
                .arg(&p)
                .assert()
                .failure()
                .stderr(predicate::str::contains(message));
        }
    }
}
