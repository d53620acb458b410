//! Authorization on logical plans: grants reached through every query shape, DDL/DML targets,
//! locations, read-only mode, row filters and column masks.

use std::collections::BTreeMap;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};
use flowengine_engine::security::{AccessError, Policy, Principal, SecurityConfig};

const CONFIG: &str = r#"
allowed_locations = ["/tmp/flowengine-allowed/"]

[[roles]]
name = "analyst"
grants = [
  { privileges = ["SELECT"], on = "orders" },
  { privileges = ["SELECT"], on = "customers" },
  { privileges = ["CREATE", "INSERT"], on = "scratch_*" },
]
row_filters = [{ table = "orders", filter = "region = current_user_attribute('region')" }]
masks = [{ table = "customers", column = "email", with = "'***'" }]

[[roles]]
name = "exporter"
grants = [{ privileges = ["SELECT", "COPY"], on = "orders" }]
"#;

async fn setup() -> (SessionContext, Policy) {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    ctx.register_udf(flowengine_engine::security::rewrite::CurrentUserAttribute::udf());
    for sql in [
        "CREATE TABLE orders (id INT, region VARCHAR, amount INT) AS VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30)",
        "CREATE TABLE customers (id INT, email VARCHAR) AS VALUES (1, 'a@x.com'), (2, 'b@y.com')",
        "CREATE TABLE salaries (id INT, pay INT) AS VALUES (1, 100)",
        "CREATE VIEW pay_view AS SELECT * FROM salaries",
        "CREATE VIEW orders_view AS SELECT id, amount FROM orders",
    ] {
        ctx.sql(sql).await.unwrap().collect().await.unwrap();
    }
    let config: SecurityConfig = toml::from_str(CONFIG).unwrap();
    (ctx, Policy::new(&config, Vec::new()))
}

fn user(roles: &[&str], region: &str) -> Principal {
    Principal {
        name: "bob".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        attributes: BTreeMap::from([("region".to_string(), region.to_string())]),
        tenant: None,
    }
}

async fn check(
    ctx: &SessionContext,
    policy: &Policy,
    who: &Principal,
    sql: &str,
) -> Result<String, AccessError> {
    let state = ctx.state();
    let plan = state.create_logical_plan(sql).await.unwrap();
    let authorized = policy.authorize(who, plan, &state, sql).await?;
    let df = ctx.execute_logical_plan(authorized.plan).await.unwrap();
    let batches = df.collect().await.unwrap();
    Ok(pretty_format_batches(&batches).unwrap().to_string())
}

#[tokio::test]
async fn a_table_without_a_grant_is_unreachable_through_every_query_shape() {
    let (ctx, policy) = setup().await;
    let bob = user(&["analyst"], "eu");
    for sql in [
        "SELECT * FROM salaries",
        "SELECT * FROM pay_view",
        "WITH s AS (SELECT * FROM salaries) SELECT * FROM s",
        "SELECT * FROM orders WHERE id IN (SELECT id FROM salaries)",
        "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM salaries WHERE salaries.id = orders.id)",
        "SELECT o.id FROM orders o JOIN salaries s ON o.id = s.id",
        "SELECT id FROM orders UNION ALL SELECT id FROM salaries",
        "SELECT (SELECT max(pay) FROM salaries) AS m",
        "EXPLAIN SELECT * FROM salaries",
        "DESCRIBE salaries",
        "SELECT * FROM datafusion.public.salaries",
        "SELECT * FROM information_schema.tables",
        "INSERT INTO orders VALUES (9, 'eu', 1)",
        "DROP TABLE orders",
        "CREATE TABLE evil AS SELECT 1",
        "CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let err = check(&ctx, &policy, &bob, sql).await.expect_err(sql);
        assert!(matches!(err, AccessError::Denied { .. }), "{sql}: {err}");
    }
    let err = check(&ctx, &policy, &bob, "SELECT * FROM pay_view")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "permission denied: user `bob` lacks SELECT on datafusion.public.salaries"
    );
}

#[tokio::test]
async fn row_filters_and_masks_apply_to_every_path() {
    let (ctx, policy) = setup().await;
    let eu = user(&["analyst"], "eu");
    let out = check(&ctx, &policy, &eu, "SELECT id FROM orders ORDER BY id")
        .await
        .unwrap();
    assert!(
        out.contains("| 1  |") && out.contains("| 3  |") && !out.contains("| 2  |"),
        "{out}"
    );
    // Through a view, a CTE, a subquery and an aggregate.
    let out = check(
        &ctx,
        &policy,
        &eu,
        "SELECT sum(amount) AS s FROM orders_view",
    )
    .await
    .unwrap();
    assert!(out.contains("| 40 |"), "{out}");
    let out = check(
        &ctx,
        &policy,
        &eu,
        "WITH o AS (SELECT * FROM orders) SELECT count(*) AS n FROM o WHERE id IN (SELECT id FROM orders)",
    )
    .await
    .unwrap();
    assert!(out.contains("| 2 |"), "{out}");
    // A user without the attribute sees nothing (NULL never matches).
    let nobody = Principal {
        attributes: BTreeMap::new(),
        ..eu.clone()
    };
    let out = check(&ctx, &policy, &nobody, "SELECT count(*) AS n FROM orders")
        .await
        .unwrap();
    assert!(out.contains("| 0 |"), "{out}");
    // Masks: the column keeps its name and type; filters on it see the masked value.
    let out = check(
        &ctx,
        &policy,
        &eu,
        "SELECT id, email FROM customers ORDER BY id",
    )
    .await
    .unwrap();
    assert!(out.contains("***") && !out.contains("a@x.com"), "{out}");
    let out = check(
        &ctx,
        &policy,
        &eu,
        "SELECT count(*) AS n FROM customers WHERE email LIKE 'a@%'",
    )
    .await
    .unwrap();
    assert!(out.contains("| 0 |"), "{out}");
    // Admins are not filtered.
    let admin = user(&["admin"], "eu");
    let out = check(&ctx, &policy, &admin, "SELECT count(*) AS n FROM orders")
        .await
        .unwrap();
    assert!(out.contains("| 3 |"), "{out}");
}

#[tokio::test]
async fn writes_need_their_privilege_and_an_allowed_location() {
    let (ctx, policy) = setup().await;
    let bob = user(&["analyst"], "eu");
    check(&ctx, &policy, &bob, "CREATE TABLE scratch_1 (x INT)")
        .await
        .unwrap();
    check(&ctx, &policy, &bob, "INSERT INTO scratch_1 VALUES (1)")
        .await
        .unwrap();
    // SELECT alone does not allow exporting.
    let err = check(
        &ctx,
        &policy,
        &bob,
        "COPY orders TO '/tmp/flowengine-allowed/o.csv'",
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("lacks COPY on datafusion.public.orders"),
        "{err}"
    );
    let exporter = user(&["exporter"], "eu");
    let err = check(
        &ctx,
        &policy,
        &exporter,
        "COPY orders TO '/tmp/elsewhere/o.csv'",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AccessError::Location(_)), "{err}");
    let err = check(
        &ctx,
        &policy,
        &exporter,
        "COPY orders TO '/tmp/flowengine-allowed/../o.csv'",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AccessError::Location(_)), "{err}");
    let dir = std::path::Path::new("/tmp/flowengine-allowed");
    std::fs::create_dir_all(dir).unwrap();
    let target = dir.join(format!("o-{}.csv", std::process::id()));
    let sql = format!("COPY orders TO '{}'", target.display());
    check(&ctx, &policy, &exporter, &sql).await.unwrap();
    let _ = std::fs::remove_file(&target);
    // SQL-level PREPARE lives in the shared session: admins only.
    let err = check(&ctx, &policy, &bob, "PREPARE p AS SELECT * FROM orders")
        .await
        .unwrap_err();
    assert!(matches!(err, AccessError::AdminOnly { .. }), "{err}");
}

#[tokio::test]
async fn read_only_mode_refuses_every_write_even_for_admins() {
    let (ctx, _) = setup().await;
    let config: SecurityConfig = toml::from_str("read_only = true").unwrap();
    let policy = Policy::new(&config, Vec::new());
    let admin = user(&["admin"], "eu");
    check(&ctx, &policy, &admin, "SELECT * FROM salaries")
        .await
        .unwrap();
    for sql in [
        "INSERT INTO orders VALUES (9, 'eu', 1)",
        "CREATE TABLE x (a INT)",
        "DROP TABLE orders",
        "COPY orders TO '/tmp/x.csv'",
        "CREATE SCHEMA s",
    ] {
        let err = check(&ctx, &policy, &admin, sql).await.expect_err(sql);
        assert!(matches!(err, AccessError::ReadOnly { .. }), "{sql}: {err}");
    }
}

/// A database family as the connectors crate declares it: LOCATION names a table.
#[derive(Debug)]
struct Databases;

impl flowengine_engine::Connector for Databases {
    fn name(&self) -> &'static str {
        "databases"
    }
    fn table_types(&self) -> Vec<flowengine_engine::TableType> {
        vec![flowengine_engine::TableType::new("POSTGRES").location_is_a_name()]
    }
    fn register(
        &self,
        builder: datafusion::execution::SessionStateBuilder,
    ) -> datafusion::error::Result<datafusion::execution::SessionStateBuilder> {
        Ok(builder)
    }
}

/// Only the authorization (never executed: the tables would connect).
async fn authorize(policy: &Policy, who: &Principal, sql: &str) -> Result<(), AccessError> {
    let registry = flowengine_engine::ConnectorRegistry::new().with(std::sync::Arc::new(Databases));
    let declared = flowengine_engine::DeclaredParams::of(&registry);
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_extension(std::sync::Arc::new(declared)),
    );
    let state = ctx.state();
    let plan = state.create_logical_plan(sql).await.unwrap();
    policy.authorize(who, plan, &state, sql).await.map(|_| ())
}

#[tokio::test]
async fn options_hosts_and_secrets_pass_the_gate() {
    let config: SecurityConfig = toml::from_str(
        r#"
allowed_locations = ["/tmp/flowengine-allowed/"]
egress = ["db.internal:5432", "127.0.0.1:9000", "*.example.com:443"]

[[secrets]]
name = "TOKEN"
allowed_roles = ["analyst"]
allowed_hosts = ["127.0.0.1:9000"]

[[roles]]
name = "analyst"
grants = [{ privileges = ["CREATE", "SELECT"], on = "scratch_*" }]
"#,
    )
    .unwrap();
    let policy = Policy::new(&config, Vec::new());
    let ana = user(&["analyst"], "eu");
    let admin = user(&["admin"], "eu");
    let denied = [
        // Path options outside the allowed locations.
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS CSV LOCATION '/tmp/flowengine-allowed/a.csv' OPTIONS ('dead_letter_path' '/tmp/elsewhere/x.jsonl')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS CSV LOCATION '/tmp/flowengine-allowed/a.csv' OPTIONS ('format.dead_letter_path' 'file:///tmp/flowengine-allowed/%2e%2e/x.jsonl')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS CSV LOCATION '/tmp/flowengine-allowed/a.csv' OPTIONS ('spool_dir' '/var/tmp')",
        // Hosts off the egress list, however written.
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('connection' 'postgresql://u@127.0.0.1:5432/db')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('host' '2130706433', 'port' '5432')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('connection' 'host=::1 port=9000 user=u')",
        "CREATE EXTERNAL TABLE scratch_a STORED AS PARQUET LOCATION 's3://b/x/' OPTIONS ('aws.endpoint' 'http://169.254.169.254')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS HTTP_JSON LOCATION 'http://10.1.2.3/x'",
        // Secrets: unscoped for a non-admin; scoped but toward another host.
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('connection' 'postgresql://u:${secret:DB}@db.internal:5432/db')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS HTTP_JSON LOCATION 'http://db.internal:5432/x' OPTIONS ('header.authorization' 'Bearer ${secret:TOKEN}')",
        // A host hidden in a secret.
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('connection' '${secret:TOKEN}')",
    ];
    for sql in denied {
        let err = authorize(&policy, &ana, sql).await.expect_err(sql);
        assert!(
            matches!(err, AccessError::Location(_) | AccessError::Secret(_)),
            "{sql}: {err}"
        );
    }
    for sql in [
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS CSV LOCATION '/tmp/flowengine-allowed/a.csv' OPTIONS ('dead_letter_path' '/tmp/flowengine-allowed/bad.jsonl')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('host' 'DB.Internal.', 'port' '5432')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:9000/x' OPTIONS ('header.authorization' 'Bearer ${secret:TOKEN}')",
        "CREATE EXTERNAL TABLE scratch_a (id INT) STORED AS HTTP_JSON LOCATION 'http://2130706433:9000/x' OPTIONS ('header.authorization' 'Bearer ${secret:TOKEN}')",
    ] {
        authorize(&policy, &ana, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // Admins: any host and unscoped secrets, but a scoped secret only toward its hosts.
    authorize(
        &policy,
        &admin,
        "CREATE EXTERNAL TABLE a (id INT) STORED AS POSTGRES LOCATION 'public.a' OPTIONS ('connection' 'postgresql://u:${secret:DB}@10.9.9.9:5432/db')",
    )
    .await
    .unwrap();
    let err = authorize(
        &policy,
        &admin,
        "CREATE EXTERNAL TABLE a (id INT) STORED AS HTTP_JSON LOCATION 'http://10.9.9.9/x' OPTIONS ('header.authorization' 'Bearer ${secret:TOKEN}')",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AccessError::Secret(_)), "{err}");
}
