//! Operating a server: the system tables (`system.queries`, `system.sessions`,
//! `system.settings`, `system.metrics`, `system.runs`) over Flight SQL, who may read them, and
//! configuration reload on SIGHUP, and the process's memory settings.

mod common;

use std::time::Duration;

use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::flight::{catalog, client, query};
use common::server::ServerProcess;
use tonic::Code;
use tonic::transport::Channel;

fn security(admin_sha: &str, analyst_sha: &str, timeout: u64) -> String {
    format!(
        r#"
[server]
query_timeout_secs = {timeout}

[[security.api_keys]]
name = "ops"
key_sha256 = "{admin_sha}"
roles = ["admin"]

[[security.api_keys]]
name = "analyst"
key_sha256 = "{analyst_sha}"
roles = ["reader"]

[[security.roles]]
name = "reader"
grants = [{{ privileges = ["SELECT"], on = "orders" }}]
"#
    )
}

async fn as_key(server: &ServerProcess, key: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = client(server).await;
    c.set_token(key.to_string());
    c
}

async fn table(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let batches = query(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The single value a query returns, as text.
async fn scalar(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let batches = query(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .unwrap_or_else(|| panic!("{sql}: no rows"));
    arrow::util::display::array_value_to_string(batch.column(0), 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_show_activity_to_admins_only() {
    let (admin, admin_sha) = common::api_key();
    let (analyst, analyst_sha) = common::api_key();
    let server = ServerProcess::start(
        &[catalog().as_path()],
        &security(&admin_sha, &analyst_sha, 3600),
    );
    let mut ops = as_key(&server, &admin).await;
    let mut reader = as_key(&server, &analyst).await;
    let orders = query(&mut reader, "SELECT * FROM orders").await.unwrap();
    let rows: usize = orders.iter().map(|b| b.num_rows()).sum();
    assert!(rows > 0);
    let failed = query(&mut ops, "SELECT * FROM no_such_table").await;
    assert!(failed.is_err());

    // Recent statements, every user's, with their outcome.
    let ok = scalar(
        &mut ops,
        &format!(
            "SELECT count(*) FROM system.queries WHERE user = 'analyst' AND kind = 'query' \
             AND status = 'ok' AND sql = 'SELECT * FROM orders' AND rows = {rows} \
             AND error IS NULL AND client LIKE '127.0.0.1:%'"
        ),
    )
    .await;
    assert_eq!(
        ok,
        "1",
        "{}",
        table(&mut ops, "SELECT * FROM system.queries").await
    );
    let error = scalar(
        &mut ops,
        "SELECT count(*) FROM system.queries WHERE user = 'ops' AND status = 'error' \
         AND sql = 'SELECT * FROM no_such_table' AND error LIKE '%no_such_table%'",
    )
    .await;
    assert_eq!(error, "1");
    // The query reading system.queries sees itself running.
    let own = table(
        &mut ops,
        "SELECT status FROM system.queries WHERE sql LIKE '%marker-42%'",
    )
    .await;
    assert!(own.contains("running"), "{own}");

    // Connections by user, with their calls and statements.
    let analyst_queries = scalar(
        &mut ops,
        "SELECT sum(queries) FROM system.sessions WHERE user = 'analyst'",
    )
    .await;
    assert_eq!(analyst_queries, "1");
    let ops_running = scalar(
        &mut ops,
        "SELECT sum(running) FROM system.sessions WHERE user = 'ops' AND calls > 0",
    )
    .await;
    assert_eq!(ops_running, "1", "the query asking is running");

    // Settings: FlowEngine's (defaults filled in) and the session's DataFusion ones.
    let timeout = scalar(
        &mut ops,
        "SELECT value FROM system.settings WHERE name = 'server.query_timeout_secs'",
    )
    .await;
    assert_eq!(timeout, "3600");
    let batch_size = scalar(
        &mut ops,
        "SELECT source FROM system.settings WHERE name = 'datafusion.execution.batch_size'",
    )
    .await;
    assert_eq!(batch_size, "datafusion");
    let settings = table(&mut ops, "SELECT * FROM system.settings").await;
    assert!(
        !settings.contains(&admin_sha) && !settings.contains(&analyst_sha),
        "API key digests are redacted: {settings}"
    );

    // The metrics exposition as rows.
    let metrics = table(
        &mut ops,
        "SELECT name, labels, value FROM system.metrics \
         WHERE name = 'flowengine_queries_total' AND labels LIKE '%status=\"error\"%'",
    )
    .await;
    assert!(metrics.contains("kind=\"query\""), "{metrics}");

    // The state store's runs are there (empty: this server ran no pipeline).
    let runs = query(&mut ops, "SELECT count(*) FROM system.runs").await;
    assert!(runs.is_ok(), "{runs:?}");

    // A stuck query: found in system.queries by an admin and killed by its id; its owner's
    // stream ends as cancelled. Another user may not kill it.
    let mut slow_client = as_key(&server, &admin).await;
    let slow = tokio::spawn(async move {
        query(
            &mut slow_client,
            "SELECT count(*) FROM range(3000000000) WHERE value % 7 = 3 -- slow-marker",
        )
        .await
    });
    let mut id = String::new();
    for _ in 0..100 {
        id = scalar(
            &mut ops,
            "SELECT coalesce(max(query_id), '') FROM system.queries \
             WHERE status = 'running' AND sql LIKE '%slow-marker'",
        )
        .await;
        if !id.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!id.is_empty(), "the slow query never showed as running");
    let kill = |id: &str| arrow_flight::Action {
        r#type: "KillQuery".into(),
        body: id.as_bytes().to_vec().into(),
    };
    let refused = reader.do_action(kill(&id)).await.unwrap_err();
    assert!(
        refused.to_string().contains("no running query"),
        "{refused}"
    );
    ops.do_action(kill(&id)).await.unwrap();
    let ended = slow.await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::Cancelled, "{ended}");
    let status = scalar(
        &mut ops,
        &format!("SELECT status FROM system.queries WHERE query_id = '{id}'"),
    )
    .await;
    assert_eq!(status, "cancelled");

    // Other users' activity is for admins only.
    for t in ["queries", "sessions", "settings", "metrics", "runs"] {
        let denied = query(&mut reader, &format!("SELECT * FROM system.{t}"))
            .await
            .unwrap_err();
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "system.{t}: {denied}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_keys_and_limits_and_names_what_needs_a_restart() {
    let (old_key, old_sha) = common::api_key();
    let (new_key, new_sha) = common::api_key();
    let (analyst, analyst_sha) = common::api_key();
    let server = ServerProcess::start(
        &[catalog().as_path()],
        &security(&old_sha, &analyst_sha, 3600),
    );
    let mut old = as_key(&server, &old_key).await;
    query(&mut old, "SELECT 1").await.unwrap();
    // The analyst may not read customers yet.
    let mut reader = as_key(&server, &analyst).await;
    let denied = query(&mut reader, "SELECT * FROM customers").await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);

    // Rotate the admin key, grant customers, lower the timeout, change the memory limit.
    let config = security(&new_sha, &analyst_sha, 1)
        .replace(
            r#"on = "orders" }]"#,
            r#"on = "orders" }, { privileges = ["SELECT"], on = "customers" }]"#,
        )
        .replace("[server]", "memory_limit = \"3GiB\"\n\n[server]");
    std::fs::write(&server.config, config).unwrap();
    server.signal("HUP");
    let log = server.wait_for_log("configuration reloaded");
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload in:\n{log}"));
    for applied in [
        "security.api_keys",
        "security.roles",
        "server.query_timeout_secs",
    ] {
        assert!(
            line.split("need a restart")
                .next()
                .unwrap()
                .contains(applied),
            "{line}"
        );
    }
    assert!(
        line.split("need a restart")
            .nth(1)
            .unwrap()
            .contains("memory_limit"),
        "{line}"
    );
    assert!(
        !line.contains(&new_sha) && !line.contains(&old_sha),
        "{line}"
    );

    let gone = query(&mut as_key(&server, &old_key).await, "SELECT 1").await;
    assert_eq!(gone.unwrap_err().code(), Code::Unauthenticated);
    let mut new = as_key(&server, &new_key).await;
    query(&mut new, "SELECT 1").await.unwrap();
    query(&mut reader, "SELECT * FROM customers").await.unwrap();
    let slow = query(
        &mut new,
        "SELECT count(*) FROM range(3000000000) WHERE value % 7 = 3",
    )
    .await;
    assert_eq!(slow.unwrap_err().code(), Code::DeadlineExceeded);

    // A broken file changes nothing.
    std::fs::write(&server.config, "memory_limit = [").unwrap();
    server.signal("HUP");
    let log = server.wait_for_log("configuration reload failed");
    assert!(log.contains("keeping the running configuration"), "{log}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    query(&mut new, "SELECT 1").await.unwrap();
}

/// The `THP_enabled` line of a running process's /proc status.
#[cfg(target_os = "linux")]
fn thp_enabled(server: &ServerProcess) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled line in {status}"))
}

/// Transparent huge pages are off for the server process (src/huge_pages.rs): with them on,
/// page zeroing took 16% of TPC-H's CPU time. `MIMALLOC_ALLOW_THP=1` keeps the kernel's setting.
#[cfg(target_os = "linux")]
#[test]
fn transparent_huge_pages_are_off_unless_mimalloc_allow_thp_keeps_them() {
    let server = ServerProcess::start(&[catalog().as_path()], "");
    assert_eq!(
        thp_enabled(&server),
        "0",
        "huge pages must be off by default"
    );
    drop(server);
    let server =
        ServerProcess::start_with_env(&[catalog().as_path()], "", &[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(
        thp_enabled(&server),
        "1",
        "MIMALLOC_ALLOW_THP=1 keeps the kernel's setting"
    );
}
