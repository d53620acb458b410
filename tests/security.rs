//! `flowengine serve` with `[security]`: logins, tokens, API keys, grants enforced on every
//! query path, row filters and masks, locations, metadata filtering, the admin endpoint and the
//! audit log, each with its negative case, through the arrow-rs Flight SQL client.

mod common;

use arrow::array::{Array, StringArray};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::Action;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::flight::{client, fetch, query};
use common::server::{ServerProcess, http_get};
use tonic::Code;
use tonic::transport::Channel;

const ANA_PASSWORD: &str = "ana-S3cret-pw!";
const ROOT_PASSWORD: &str = "root-pw-Xy9";
/// The value of a `${secret:...}` the catalog uses: it must never appear anywhere.
const SECRET_VALUE: &str = "TopSecretToken-4f1c9e";

struct Fixture {
    server: ServerProcess,
    dir: tempfile::TempDir,
    key: String,
}

impl Fixture {
    fn audit(&self) -> String {
        // The writer thread flushes after each burst; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let (key, key_sha) = common::api_key();
    let catalog = dir.path().join("catalog.sql");
    std::fs::write(
        &catalog,
            "CREATE TABLE orders (id INT, region VARCHAR, amount INT) AS VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30);
             CREATE TABLE customers (id INT, email VARCHAR) AS VALUES (1, 'a@x.com'), (2, 'b@y.com');
             CREATE TABLE salaries (id INT, pay INT) AS VALUES (1, 100);
             CREATE VIEW pay_view AS SELECT * FROM salaries;
             CREATE EXTERNAL TABLE hooks (id INT) STORED AS WEBHOOK LOCATION 'http://127.0.0.1:9/hook'
               OPTIONS ('header.authorization' 'Bearer ${secret:HOOK_TOKEN}', 'retries' '0');"
    )
    .unwrap();
    let config = format!(
        r#"
[security]
audit_file = "{audit}"
allowed_locations = ["{allowed}/"]
max_failed_logins = 3
lockout_secs = 60

[[security.users]]
name = "root"
password_hash = "{root}"
roles = ["admin"]

[[security.users]]
name = "ana"
password_hash = "{ana}"
roles = ["analyst"]
attributes = {{ region = "eu" }}

[[security.api_keys]]
name = "loader"
key_sha256 = "{key_sha}"
roles = ["loader"]

[[security.roles]]
name = "analyst"
grants = [
  {{ privileges = ["SELECT"], on = "orders" }},
  {{ privileges = ["SELECT"], on = "customers" }},
  {{ privileges = ["CREATE", "INSERT", "SELECT"], on = "scratch_*" }},
]
row_filters = [{{ table = "orders", filter = "region = current_user_attribute('region')" }}]
masks = [{{ table = "customers", column = "email", with = "'***'" }}]

[[security.roles]]
name = "loader"
grants = [{{ privileges = ["SELECT", "COPY"], on = "orders" }}, {{ privileges = ["ALL"], on = "staging_*" }}]
"#,
        audit = dir.path().join("audit.jsonl").display(),
        allowed = allowed.display(),
        root = common::hash_password(ROOT_PASSWORD),
        ana = common::hash_password(ANA_PASSWORD),
    );
    // SAFETY of the secret: it reaches the server only through its environment.
    let server = ServerProcess::start_with_env(
        &[catalog.as_path()],
        &config,
        &[("FLOWENGINE_SECRET_HOOK_TOKEN", SECRET_VALUE)],
    );
    Fixture { server, dir, key }
}

async fn login(
    f: &Fixture,
    user: &str,
    password: &str,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let mut c = client(&f.server).await;
    c.handshake(user, password)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

async fn denied(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> tonic::Status {
    let err = query(c, sql).await.expect_err(sql);
    assert_eq!(err.code(), Code::PermissionDenied, "{sql}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_tokens_and_api_keys() {
    let f = start();
    // No credentials.
    let mut anon = client(&f.server).await;
    let err = query(&mut anon, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Wrong password, then too many failures for the user.
    let err = login(&f, "ana", "wrong").await.unwrap_err();
    assert!(err.contains("invalid user name or password"), "{err}");
    let err = login(&f, "nobody", "wrong").await.unwrap_err();
    assert!(err.contains("invalid user name or password"), "{err}");
    // Good login: a token; later calls carry it.
    let mut ana = login(&f, "ana", ANA_PASSWORD).await.unwrap();
    let token = ana.token().cloned().expect("bearer token");
    assert!(token.starts_with("fet_"));
    query(&mut ana, "SELECT 1").await.unwrap();
    // A client that only sends Basic may pass the token as the password.
    let mut basic = client(&f.server).await;
    basic.handshake("whatever", &token).await.unwrap();
    query(&mut basic, "SELECT 1").await.unwrap();
    // API key as bearer.
    let mut loader = client(&f.server).await;
    loader.set_token(f.key.clone());
    query(&mut loader, "SELECT count(*) FROM orders")
        .await
        .unwrap();
    let mut forged = client(&f.server).await;
    // Change the last digit (to another value: the key may end in `0` already).
    let last = if f.key.ends_with('0') { '1' } else { '0' };
    forged.set_token(format!("{}{last}", &f.key[..f.key.len() - 1]));
    let err = query(&mut forged, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Revoke: the token stops working.
    let mut rows = ana
        .do_action(Action::new("RevokeToken", token.clone().into_bytes()))
        .await
        .unwrap();
    use futures::StreamExt;
    let reply = rows.next().await.unwrap().unwrap();
    assert_eq!(&reply.body[..], b"revoked");
    let err = query(&mut ana, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("revoked"), "{err}");
    // Lockout after max_failed_logins (3) failures for one user.
    for _ in 0..3 {
        let _ = login(&f, "root", "bad").await;
    }
    let err = login(&f, "root", ROOT_PASSWORD).await.unwrap_err();
    assert!(err.contains("too many failed logins"), "{err}");
    // The admin endpoint: health is open, metrics need an admin or monitor.
    assert_eq!(http_get(f.server.admin, "/health").0, 200);
    assert_eq!(http_get(f.server.admin, "/metrics").0, 401);
    let audit = f.audit();
    assert!(audit.contains(r#""event":"login","user":"ana""#), "{audit}");
    assert!(audit.contains(r#""decision":"deny""#), "{audit}");
    assert!(!audit.contains(ANA_PASSWORD) && !audit.contains(&token) && !audit.contains(&f.key));
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_filters_masks_and_locations_on_every_path() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await.unwrap();
    for sql in [
        "SELECT * FROM salaries",
        "SELECT * FROM pay_view",
        "WITH s AS (SELECT * FROM salaries) SELECT * FROM s",
        "SELECT * FROM orders WHERE id IN (SELECT id FROM salaries)",
        "SELECT o.id FROM orders o JOIN salaries s ON o.id = s.id",
        "SELECT id FROM orders UNION ALL SELECT id FROM salaries",
        "SELECT * FROM information_schema.tables",
    ] {
        let err = denied(&mut ana, sql).await;
        assert!(err.message().contains("lacks SELECT"), "{sql}: {err}");
    }
    // A prepared statement reaching the table is denied too (at prepare time).
    let err = ana
        .prepare("SELECT * FROM salaries WHERE id = $1".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lacks SELECT"), "{err}");
    // Parameters are values, never SQL.
    let mut stmt = ana
        .prepare(
            "SELECT count(*) AS n FROM orders WHERE region = $1".into(),
            None,
        )
        .await
        .unwrap();
    let params = arrow::array::RecordBatch::try_from_iter(vec![(
        "$1",
        std::sync::Arc::new(StringArray::from(vec!["eu' OR '1'='1"])) as std::sync::Arc<dyn Array>,
    )])
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let out = pretty_format_batches(&fetch(&mut ana, info).await.unwrap())
        .unwrap()
        .to_string();
    assert!(out.contains("| 0 |"), "{out}");
    // Row filter: ana sees only eu orders, through every shape.
    let out = pretty_format_batches(
        &query(&mut ana, "SELECT sum(amount) AS s FROM orders")
            .await
            .unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(out.contains("| 40 |"), "{out}");
    // Mask.
    let out = pretty_format_batches(
        &query(&mut ana, "SELECT email FROM customers")
            .await
            .unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(out.contains("***") && !out.contains("a@x.com"), "{out}");
    // Locations: /etc/passwd, COPY outside the allowed prefix, no COPY privilege.
    let err = denied(
        &mut ana,
        "CREATE EXTERNAL TABLE scratch_pw (l VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
    )
    .await;
    assert!(
        err.message().contains("not allowed") || err.message().contains("outside"),
        "{err}"
    );
    let err = denied(&mut ana, "COPY orders TO '/tmp/x.csv'").await;
    assert!(err.message().contains("lacks COPY"), "{err}");
    let mut loader = client(&f.server).await;
    loader.set_token(f.key.clone());
    let err = denied(
        &mut loader,
        "COPY orders TO '/tmp/flowengine-forbidden.csv'",
    )
    .await;
    assert!(
        err.message().contains("outside the allowed locations"),
        "{err}"
    );
    let target = f.dir.path().join("allowed/orders.csv");
    query(
        &mut loader,
        &format!("COPY orders TO '{}'", target.display()),
    )
    .await
    .unwrap();
    assert!(std::fs::read_to_string(&target).unwrap().contains("eu"));
    let err = denied(
        &mut loader,
        &format!(
            "COPY orders TO '{}' STORED AS CSV",
            f.dir.path().join("audit.jsonl").display()
        ),
    )
    .await;
    assert!(
        err.message().contains("server's own files") || err.message().contains("outside"),
        "{err}"
    );
    // Writes within grants work.
    let mut c = ana
        .execute_update("CREATE TABLE scratch_t (x INT)".into(), None)
        .await;
    assert!(c.is_ok(), "{c:?}");
    c = ana
        .execute_update("INSERT INTO scratch_t VALUES (1), (2)".into(), None)
        .await;
    assert_eq!(c.unwrap(), 2);
    let err = ana
        .execute_update("DROP TABLE orders".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lacks DROP"), "{err}");
    // Metadata lists only what the caller may see.
    let info = ana
        .get_tables(CommandGetTables {
            include_schema: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let batches = fetch(&mut ana, info).await.unwrap();
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("table_name")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        })
        .collect();
    assert!(names.contains(&"orders".to_string()), "{names:?}");
    assert!(
        !names.contains(&"salaries".to_string()) && !names.contains(&"pay_view".to_string()),
        "{names:?}"
    );
    // An admin sees and reads everything, unfiltered.
    let mut root = login(&f, "root", ROOT_PASSWORD).await.unwrap();
    let out = pretty_format_batches(
        &query(&mut root, "SELECT count(*) AS n FROM pay_view")
            .await
            .unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(out.contains("| 1 |"), "{out}");
    // Secrets: EXPLAIN and errors show references, never values.
    let out = pretty_format_batches(
        &query(&mut root, "EXPLAIN INSERT INTO hooks VALUES (1)")
            .await
            .unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(!out.contains(SECRET_VALUE), "{out}");
    let err = root
        .execute_update("INSERT INTO hooks VALUES (1)".into(), None)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(SECRET_VALUE), "{err}");
    // The audit log has allow and deny records with tables, and no secret anywhere.
    let audit = f.audit();
    let denial = audit
        .lines()
        .find(|l| l.contains("FROM pay_view") && l.contains(r#""decision":"deny""#))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        denial.contains("lacks SELECT on datafusion.public.salaries"),
        "{denial}"
    );
    let allowed = audit
        .lines()
        .find(|l| l.contains("SELECT sum(amount)") && l.contains(r#""decision":"allow""#))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        allowed.contains(r#""reads":["datafusion.public.orders"]"#)
            && allowed.contains(r#""rows":1"#),
        "{allowed}"
    );
    let log = f.server.drain_log().join("\n");
    for text in [&audit, &log] {
        assert!(!text.contains(SECRET_VALUE), "secret leaked:\n{text}");
        assert!(!text.contains(ANA_PASSWORD) && !text.contains(ROOT_PASSWORD));
    }
}

/// `CREATE CHECK` and `CREATE INCREMENTAL VIEW` are planned as what they read, so grants, row
/// filters and masks apply to them as to any query, and a check cannot write a file.
#[tokio::test(flavor = "multi_thread")]
async fn checks_and_incremental_views_obey_grants_filters_and_masks() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await.unwrap();
    let text =
        |batches: &[arrow::array::RecordBatch]| pretty_format_batches(batches).unwrap().to_string();
    // No SELECT on salaries: neither a check nor an incremental view may read it.
    for sql in [
        "CREATE CHECK c ON salaries EXPECT pay > 0",
        "CREATE CHECK c AS SELECT * FROM salaries WHERE pay < 0",
        "CREATE INCREMENTAL VIEW scratch_pay ON salaries BY id",
    ] {
        let err = denied(&mut ana, sql).await;
        assert!(err.message().contains("lacks SELECT"), "{sql}: {err}");
    }
    // No CREATE outside scratch_*.
    let err = denied(&mut ana, "CREATE INCREMENTAL VIEW mine ON orders BY id").await;
    assert!(err.message().contains("lacks CREATE"), "{err}");
    // A dead-letter file is a write on the server's host: refused.
    let err = denied(
        &mut ana,
        "CREATE CHECK c ON orders EXPECT amount > 0 DEAD_LETTER '/tmp/flowengine-dl.json'",
    )
    .await;
    assert!(err.message().contains("DEAD_LETTER"), "{err}");
    // The row filter applies: ana sees only eu orders, so the check passes for her and warns
    // for the administrator, who sees the us order too.
    let sql = "CREATE CHECK eu_only ON orders EXPECT region = 'eu' WARN";
    let out = text(&query(&mut ana, sql).await.unwrap());
    assert!(out.contains("| passed") && out.contains("| 0 "), "{out}");
    let mut root = login(&f, "root", ROOT_PASSWORD).await.unwrap();
    let out = text(&query(&mut root, sql).await.unwrap());
    assert!(out.contains("| warned") && out.contains("| 1 "), "{out}");
    // Masks apply: the check sees the masked value.
    let out = text(
        &query(
            &mut ana,
            "CREATE CHECK masked ON customers EXPECT email = '***' WARN",
        )
        .await
        .unwrap(),
    );
    assert!(out.contains("| passed"), "{out}");
    // An incremental view holds the rows its creator may see, nothing more.
    query(
        &mut ana,
        "CREATE INCREMENTAL VIEW scratch_new ON orders BY id",
    )
    .await
    .unwrap();
    let out = text(
        &query(&mut ana, "SELECT sum(amount) AS s FROM scratch_new")
            .await
            .unwrap(),
    );
    assert!(out.contains("| 40 |"), "{out}");
}

#[test]
fn serving_without_users_or_without_auth_on_a_public_address_is_refused() {
    // On a loopback address a first run gets a one-time token instead (tests/python_clients.rs).
    let out = common::flowengine()
        .args(["serve", "--bind", "0.0.0.0:0", "--admin-bind", "off"])
        .env_remove("FLOWENGINE_SECURITY_AUTH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no users or API keys are configured"), "{err}");
    let out = common::flowengine()
        .args(["serve", "--bind", "0.0.0.0:0", "--admin-bind", "off"])
        .env("FLOWENGINE_SECURITY_AUTH", "none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    // Plain-text passwords in the configuration are refused, pointing at the helper.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flowengine.toml");
    // (succeeded, stderr) of `config check` on this file text.
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = common::flowengine()
            .arg("--config")
            .arg(&config)
            .args(["config", "check"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = check("[[security.users]]\nname = \"a\"\npassword_hash = \"hunter2\"\n");
    assert!(!ok);
    assert!(
        err.contains("flowengine user hash-password") && !err.contains("hunter2"),
        "{err}"
    );
    // So are passwords in URLs and plain keys: they must be secret references.
    for (line, key) in [
        (
            "state_url = \"postgresql://u:hunter2@db/state\"",
            "state_url",
        ),
        ("lineage_api_key = \"hunter2\"", "lineage_api_key"),
    ] {
        let (ok, err) = check(&format!("{line}\n"));
        assert!(!ok);
        assert!(
            err.contains(key) && err.contains("${secret:NAME}") && !err.contains("hunter2"),
            "{err}"
        );
    }
    let (ok, err) = check("state_url = \"postgresql://u:${secret:PG}@db/state\"\n");
    assert!(ok, "{err}");
}
