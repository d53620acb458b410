//! The server's trust boundary, attacked the way an ordinary account would: host files through
//! encoded paths and path-valued options, secrets sent to hosts the user picks, redirects and
//! next-page links leaving the allowed hosts, statements deep enough to crash a planner,
//! functions building huge values, `SET` leaking into other sessions, secrets in logs, and a
//! lockout one guesser could turn against everyone behind the same address. Black-box, against
//! `flowengine serve`, through the arrow-rs Flight SQL client; each case with its variants.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{Array, StringArray};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use base64::Engine as _;
use common::flight::{client, query};
use common::server::ServerProcess;
use tonic::Code;
use tonic::transport::Channel;

const ANA_PASSWORD: &str = "ana-S3cret-pw!";
const ROOT_PASSWORD: &str = "root-pw-Xy9";
const HOOK_TOKEN: &str = "TopSecretToken-77aa01";
const DB_PASSWORD: &str = "UnscopedDbPassword-5e2";

/// A loopback HTTP listener that counts connections and answers each request with `reply`.
struct Listener {
    port: u16,
    hits: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Listener {
    fn start(reply: impl Fn(u16) -> String + Send + 'static) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, r) = (Arc::clone(&hits), Arc::clone(&requests));
        std::thread::spawn(move || {
            for stream in socket.incoming() {
                let Ok(mut stream) = stream else { break };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8192];
                let n = stream.read(&mut buf).unwrap_or(0);
                r.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = stream.write_all(reply(port).as_bytes());
            }
        });
        Self {
            port,
            hits,
            requests,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn json_reply(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Fixture {
    server: ServerProcess,
    dir: tempfile::TempDir,
    allowed: std::path::PathBuf,
    /// A JSON API the egress list and the scoped secret allow.
    api: Listener,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    std::fs::write(allowed.join("ok.csv"), "id\n1\n2\n").unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
    let api = Listener::start(|_| json_reply(r#"[{"id": 1}, {"id": 2}]"#));
    let catalog = dir.path().join("catalog.sql");
    std::fs::write(
        &catalog,
        "CREATE TABLE orders (id INT, region VARCHAR) AS VALUES (1, 'eu'), (2, 'us');
         CREATE TABLE payroll (id INT, pay INT) AS VALUES (1, 100);",
    )
    .unwrap();
    let config = format!(
        r#"
[security]
audit_file = "{audit}"
allowed_locations = ["{allowed}/"]
egress = ["127.0.0.1:{api}"]
max_failed_logins = 3
lockout_secs = 60

[[security.secrets]]
name = "HOOK_TOKEN"
allowed_roles = ["analyst"]
allowed_hosts = ["127.0.0.1:{api}"]

[[security.users]]
name = "root"
password_hash = "{root}"
roles = ["admin"]

[[security.users]]
name = "ana"
password_hash = "{ana}"
roles = ["analyst"]

[[security.roles]]
name = "analyst"
grants = [
  {{ privileges = ["SELECT"], on = "orders" }},
  {{ privileges = ["SELECT"], on = "information_schema.*" }},
  {{ privileges = ["CREATE", "INSERT", "SELECT"], on = "scratch_*" }},
]
"#,
        audit = dir.path().join("audit.jsonl").display(),
        allowed = allowed.display(),
        api = api.port,
        root = common::hash_password(ROOT_PASSWORD),
        ana = common::hash_password(ANA_PASSWORD),
    );
    let server = ServerProcess::start_with_env(
        &[catalog.as_path()],
        &config,
        &[
            ("FLOWENGINE_SECRET_HOOK_TOKEN", HOOK_TOKEN),
            ("FLOWENGINE_SECRET_DB_PASSWORD", DB_PASSWORD),
        ],
    );
    Fixture {
        server,
        dir,
        allowed,
        api,
    }
}

async fn login(f: &Fixture, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = client(&f.server).await;
    c.handshake(user, password).await.expect("login");
    c
}

async fn refused(c: &mut FlightSqlServiceClient<Channel>, sql: &str, code: Code) -> String {
    let err = query(c, sql).await.expect_err(sql);
    assert_eq!(err.code(), code, "{sql}: {err}");
    err.message().to_string()
}

async fn scalar(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let batches = query(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = pretty_format_batches(&batches).unwrap().to_string();
    text.lines()
        .nth(3)
        .unwrap_or_default()
        .trim_matches(|c| c == '|' || c == ' ')
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_files_are_out_of_reach_however_the_path_is_spelled() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let a = f.allowed.display();
    // Inside the allowed directory: fine.
    query(
        &mut ana,
        &format!("CREATE EXTERNAL TABLE scratch_ok STORED AS CSV LOCATION '{a}/ok.csv'"),
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&mut ana, "SELECT count(*) FROM scratch_ok").await,
        "2"
    );
    let config = f.server.config.display().to_string();
    let reads = [
        format!("file://{a}/%2e%2e/flowengine.toml"),
        format!("file://{a}/%2E%2E/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("file://{a}/.%2e/outside/x.csv"),
        format!("file:{a}/%2e%2e/outside/x.csv"),
        format!("file://localhost{a}/%2e%2e/outside/x.csv"),
        format!("file://{a}/%252e%252e/outside/x.csv"),
        format!("file://{a}%2f..%2foutside/x.csv"),
        format!("{a}/../outside/x.csv"),
        format!("{a}/etc/passwd"),
        format!("{a}/etc/../hostname"),
        "/etc/passwd".to_string(),
        config.clone(),
        format!("file://{config}"),
    ];
    for (i, location) in reads.iter().enumerate() {
        let sql = format!(
            "CREATE EXTERNAL TABLE scratch_r{i} STORED AS CSV LOCATION '{location}' \
             OPTIONS ('format.delimiter' '|', 'format.has_header' 'false')"
        );
        refused(&mut ana, &sql, Code::PermissionDenied).await;
    }
    // Writes: COPY targets outside, however spelled, create nothing.
    for target in [
        format!("file://{a}/%2e%2e/outside/pwned.csv"),
        format!("file:{a}/%2e%2e/outside/pwned.csv"),
        format!("{a}/../outside/pwned.csv"),
    ] {
        let sql = format!("COPY (SELECT 'x' AS x) TO '{target}' STORED AS CSV");
        refused(&mut ana, &sql, Code::PermissionDenied).await;
    }
    assert!(!f.dir.path().join("outside/pwned.csv").exists());
    // Admins are not confined to the allowed locations, but never reach the server's files.
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    let config_dir = f.server.config.parent().unwrap().display().to_string();
    let sql = format!(
        "CREATE EXTERNAL TABLE cfg STORED AS CSV LOCATION 'file://{config_dir}/x/%2e%2e/flowengine.toml' \
         OPTIONS ('format.delimiter' '|', 'format.has_header' 'false')"
    );
    let err = query(&mut root, &sql).await.expect_err(&sql);
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_valued_options_pass_the_same_gate() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let a = f.allowed.display();
    let outside = f.dir.path().join("outside");
    let o = outside.display();
    let api = f.api.port;
    for sql in [
        format!(
            "CREATE EXTERNAL TABLE scratch_dl (id INT) STORED AS CSV LOCATION '{a}/ok.csv' \
             OPTIONS ('on_error' 'dead_letter', 'dead_letter_path' '{o}/x.jsonl')"
        ),
        format!(
            "CREATE EXTERNAL TABLE scratch_dl2 (id INT) STORED AS CSV LOCATION '{a}/ok.csv' \
             OPTIONS ('format.on_error' 'dead_letter', 'format.dead_letter_path' 'file://{a}/%2e%2e/outside/y.jsonl')"
        ),
        format!(
            "CREATE EXTERNAL TABLE scratch_lite (id INT) STORED AS SQLITE LOCATION 'items' \
             OPTIONS ('path' '{o}/evil.sqlite')"
        ),
        // A database toward an allowed host, but a CA file the server would read from the host.
        format!(
            "CREATE EXTERNAL TABLE scratch_pgca STORED AS POSTGRES LOCATION 'public.x' \
             OPTIONS ('host' '127.0.0.1', 'port' '{api}', 'sslrootcert' '/etc/passwd')"
        ),
        format!(
            "CREATE EXTERNAL TABLE scratch_myca STORED AS MYSQL LOCATION 'x' \
             OPTIONS ('connection' 'mysql://root@127.0.0.1:{api}/test', 'sslrootcert' '{a}/etc/passwd')"
        ),
    ] {
        let message = refused(&mut ana, &sql, Code::PermissionDenied).await;
        assert!(message.contains("option"), "{message}");
    }
    assert_eq!(f.api.hits(), 0, "refused before connecting");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // A dead-letter file inside the allowed directory is fine.
    query(
        &mut ana,
        &format!(
            "CREATE EXTERNAL TABLE scratch_dl3 (id INT) STORED AS CSV LOCATION '{a}/ok.csv' \
             OPTIONS ('on_error' 'dead_letter', 'dead_letter_path' '{a}/bad.jsonl')"
        ),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_connections_go_only_where_they_are_scoped() {
    let f = start();
    let trap = Listener::start(|_| json_reply("[]"));
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let t = trap.port;
    let api = f.api.port;
    for (sql, why) in [
        // An unscoped secret: admins only, even toward an allowed host.
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_pg STORED AS POSTGRES LOCATION 'public.x' \
                 OPTIONS ('connection' 'postgresql://app:${{secret:DB_PASSWORD}}@127.0.0.1:{api}/db')"
            ),
            "only admins",
        ),
        // A scoped secret toward a host outside its scope, in several spellings of the address.
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_h (id INT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:{t}/x' \
                 OPTIONS ('header.authorization' 'Bearer ${{secret:HOOK_TOKEN}}')"
            ),
            "egress",
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_h2 (id INT) STORED AS HTTP_JSON LOCATION 'http://2130706433:{t}/x' \
                 OPTIONS ('header.x-token' '${{secret:HOOK_TOKEN}}')"
            ),
            "egress",
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_w (id INT) STORED AS WEBHOOK LOCATION 'http://[::1]:{t}/hook' \
                 OPTIONS ('header.authorization' 'Bearer ${{secret:HOOK_TOKEN}}')"
            ),
            "egress",
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_s3 STORED AS PARQUET LOCATION 's3://bucket/x/' \
                 OPTIONS ('aws.endpoint' 'http://localhost:{t}', 'aws.access_key_id' '${{secret:HOOK_TOKEN}}', 'aws.region' 'us-east-1')"
            ),
            "",
        ),
        // Hosts off the egress list, with no secret at all.
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_pg2 STORED AS POSTGRES LOCATION 'public.x' \
                 OPTIONS ('host' '127.0.0.1', 'port' '{t}', 'user' 'app')"
            ),
            "egress",
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_my STORED AS MYSQL LOCATION 'x' \
                 OPTIONS ('connection' 'mysql://root@0x7f.1:{t}/test')"
            ),
            "egress",
        ),
        (
            "CREATE EXTERNAL TABLE scratch_pg3 STORED AS POSTGRES LOCATION 'public.x'".to_string(),
            "egress",
        ),
        // What the driver reads besides the URL's host: libpq's ?host=, Unix sockets.
        (
            format!(
                "CREATE EXTERNAL TABLE scratch_pg4 STORED AS POSTGRES LOCATION 'public.x' \
                 OPTIONS ('connection' 'postgresql://app@127.0.0.1:{api}/db?host=127.0.0.1&port={t}')"
            ),
            "egress",
        ),
        (
            "CREATE EXTERNAL TABLE scratch_pg5 STORED AS POSTGRES LOCATION 'public.x' \
             OPTIONS ('connection' 'host=/var/run/postgresql user=postgres dbname=test')"
                .to_string(),
            "egress",
        ),
    ] {
        let message = refused(&mut ana, &sql, Code::PermissionDenied).await;
        assert!(message.contains(why), "{sql}: {message}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(trap.hits(), 0, "nothing may reach the user's listener");
    // The scoped secret toward its own host works, and arrives there.
    query(
        &mut ana,
        &format!(
            "CREATE EXTERNAL TABLE scratch_api (id BIGINT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:{api}/items' \
             OPTIONS ('header.authorization' 'Bearer ${{secret:HOOK_TOKEN}}')"
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&mut ana, "SELECT count(*) FROM scratch_api").await,
        "2"
    );
    let seen = f.api.requests.lock().unwrap().join("\n");
    assert!(seen.contains(HOOK_TOKEN), "{seen}");
    // The admin may use the unscoped secret; a scoped one still only toward its hosts.
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    let sql = format!(
        "CREATE EXTERNAL TABLE hook2 (id INT) STORED AS WEBHOOK LOCATION 'http://127.0.0.1:{t}/hook' \
         OPTIONS ('header.authorization' 'Bearer ${{secret:HOOK_TOKEN}}')"
    );
    let err = query(&mut root, &sql).await.expect_err(&sql);
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // Refusals never print a secret's value.
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains(HOOK_TOKEN) && !audit.contains(DB_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_and_next_links_stay_inside_the_allowed_hosts() {
    let f = start();
    let trap = Listener::start(|_| json_reply(r#"[{"id": 99}]"#));
    let t = trap.port;
    // The allowed API redirects to the trap, or links its next page there.
    let redirect = Listener::start(move |_| {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{t}/stolen\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    });
    let paged = Listener::start(move |_| {
        json_reply(&format!(
            r#"{{"items": [{{"id": 1}}], "next": "http://127.0.0.1:{t}/page2"}}"#
        ))
    });
    let config = std::fs::read_to_string(&f.server.config).unwrap().replace(
        &format!("egress = [\"127.0.0.1:{}\"]", f.api.port),
        &format!(
            "egress = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
            redirect.port, paged.port
        ),
    );
    drop(f.server);
    let server = ServerProcess::start_with_env(
        &[],
        &config,
        &[("FLOWENGINE_SECRET_HOOK_TOKEN", HOOK_TOKEN)],
    );
    let mut ana = client(&server).await;
    ana.handshake("ana", ANA_PASSWORD).await.unwrap();
    query(
        &mut ana,
        &format!(
            "CREATE EXTERNAL TABLE scratch_redir (id BIGINT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:{}/x'",
            redirect.port
        ),
    )
    .await
    .unwrap();
    let err = query(&mut ana, "SELECT * FROM scratch_redir")
        .await
        .unwrap_err();
    assert!(err.message().contains("allowed hosts"), "{err}");
    query(
        &mut ana,
        &format!(
            "CREATE EXTERNAL TABLE scratch_paged (id BIGINT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:{}/x' \
             OPTIONS ('records_path' 'items', 'pagination' 'next_link', 'next_link_path' 'next')",
            paged.port
        ),
    )
    .await
    .unwrap();
    let err = query(&mut ana, "SELECT * FROM scratch_paged")
        .await
        .unwrap_err();
    assert!(err.message().contains("allowed hosts"), "{err}");
    // HTTP file tables do not follow redirects at all: the read fails, the trap sees nothing.
    let created = query(
        &mut ana,
        &format!(
            "CREATE EXTERNAL TABLE scratch_http_csv (id INT) STORED AS CSV LOCATION 'http://127.0.0.1:{}/data.csv'",
            redirect.port
        ),
    )
    .await;
    if created.is_ok() {
        query(&mut ana, "SELECT * FROM scratch_http_csv")
            .await
            .expect_err("a redirect is not followed");
    }
    assert_eq!(trap.hits(), 0, "no hop may reach the trap");
    // An admin's table may follow a redirect to another host, but its headers (credentials)
    // stay with the table's own origin.
    let mut root = client(&server).await;
    root.handshake("root", ROOT_PASSWORD).await.unwrap();
    query(
        &mut root,
        &format!(
            "CREATE EXTERNAL TABLE redirected (id BIGINT) STORED AS HTTP_JSON LOCATION 'http://127.0.0.1:{}/x' \
             OPTIONS ('header.x-token' 'AdminHeaderValue-19f')",
            redirect.port
        ),
    )
    .await
    .unwrap();
    let rows = query(&mut root, "SELECT id FROM redirected").await.unwrap();
    assert_eq!(common::flight::rows(&rows), 1);
    let at_redirect = redirect.requests.lock().unwrap().join("\n");
    assert!(
        at_redirect.contains("AdminHeaderValue-19f"),
        "{at_redirect}"
    );
    let at_trap = trap.requests.lock().unwrap().join("\n");
    assert!(
        at_trap.contains("GET /stolen") && !at_trap.contains("AdminHeaderValue-19f"),
        "{at_trap}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_or_wide_sql_is_refused_and_the_server_stays_up() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let plus = format!("SELECT {}", vec!["1"; 2_500].join("+"));
    let ors = format!(
        "SELECT 1 WHERE {}",
        (0..5_000)
            .map(|i| format!("1={i}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    let unions = vec!["SELECT 1"; 5_000].join(" UNION ALL ");
    let mut ctes = String::from("WITH c0 AS (SELECT 1 AS x)");
    for i in 1..1_500 {
        ctes.push_str(&format!(", c{i} AS (SELECT x FROM c{})", i - 1));
    }
    ctes.push_str(" SELECT * FROM c1499");
    let concat = format!("SELECT {}", vec!["'a'"; 3_000].join(" || "));
    for sql in [&plus, &ors, &unions, &ctes, &concat] {
        let message = refused(&mut ana, sql, Code::InvalidArgument).await;
        assert!(message.contains("too complex"), "{message}");
    }
    // Just below the limits the same shapes plan and run for a non-admin, whose plans the
    // policy walks and rewrites.
    let plus = format!("SELECT {} AS n", vec!["1"; 1_900].join("+"));
    assert_eq!(scalar(&mut ana, &plus).await, "1900");
    let ors = format!(
        "SELECT count(*) FROM orders WHERE {}",
        (0..900)
            .map(|i| format!("id={i}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    assert_eq!(scalar(&mut ana, &ors).await, "2");
    let unions = vec!["SELECT id FROM orders"; 900].join(" UNION ALL ");
    assert_eq!(
        scalar(&mut ana, &format!("SELECT count(*) FROM ({unions})")).await,
        "1800"
    );
    let mut ctes = String::from("WITH c0 AS (SELECT id FROM orders)");
    for i in 1..900 {
        ctes.push_str(&format!(", c{i} AS (SELECT id FROM c{})", i - 1));
    }
    ctes.push_str(" SELECT count(*) FROM c899");
    assert_eq!(scalar(&mut ana, &ctes).await, "2");
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    assert_eq!(scalar(&mut root, "SELECT 40 + 2").await, "42");
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_cannot_build_values_past_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[], "memory_limit = \"512MiB\"\n");
    let _ = dir;
    let mut c = client(&server).await;
    for sql in [
        "SELECT length(repeat('x', 1500000000))",
        "SELECT length(lpad('x', 2147483647))",
        "SELECT length(rpad('x', 2147483647, 'yz'))",
        "SELECT cardinality(array_repeat(1, 1000000000))",
        "SELECT length(repeat(CAST(v AS VARCHAR), 100000000)) FROM (VALUES (1), (2)) t(v)",
        "SELECT length(concat(repeat('x', 30000000), repeat('y', 30000000)))",
        "SELECT length(replace(repeat('a', 1000000), 'a', repeat('b', 1000)))",
        "SELECT cardinality(range(10000000000))",
        // A constant folded while planning is copied into every row of a batch.
        "SELECT max(c) FROM (SELECT lpad('x', 100000) AS c FROM range(100000))",
        // The `||` operator, string_agg (grouped or not) and date/timestamp ranges.
        "SELECT length(s || s || s || s) FROM (SELECT lpad(CAST(value AS VARCHAR), 20000000, 'x') AS s FROM range(1))",
        "SELECT length(string_agg(lpad(CAST(value AS VARCHAR), 1000000, 'x'), ',')) FROM range(100)",
        "SELECT length(string_agg(lpad(CAST(value AS VARCHAR), 1000000, 'x'), ',')) FROM range(100) GROUP BY value % 2",
        "SELECT cardinality(range(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1' SECOND))",
        "SELECT cardinality(range(DATE '0001-01-01', DATE '9999-12-31', INTERVAL '1' DAY))",
    ] {
        let err = query(&mut c, sql).await.expect_err(sql);
        assert_eq!(err.code(), Code::ResourceExhausted, "{sql}: {err}");
    }
    // Eight at once leave the server well under a gigabyte.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client(&server).await;
        tasks.push(tokio::spawn(async move {
            query(&mut c, "SELECT length(repeat('x', 1500000000))").await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    let rss = server.rss_bytes();
    assert!(rss < 1 << 30, "server RSS {rss} bytes");
    assert_eq!(
        scalar(&mut c, "SELECT length(repeat('ab', 1000))").await,
        "2000"
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT length(string_agg('ab' || CAST(value AS VARCHAR), ',')) FROM range(10)"
        )
        .await,
        "39"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn set_changes_only_the_callers_session_and_refusals_are_audited() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    let tz = "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.time_zone'";
    let before = scalar(&mut root, tz).await;
    query(&mut ana, "SET datafusion.execution.time_zone = '+05:00'")
        .await
        .unwrap();
    assert_eq!(scalar(&mut ana, tz).await, "+05:00");
    assert_eq!(
        scalar(&mut root, tz).await,
        before,
        "root's session is untouched"
    );
    query(
        &mut ana,
        "SET datafusion.sql_parser.enable_ident_normalization = false",
    )
    .await
    .unwrap();
    assert_eq!(scalar(&mut root, "SELECT COUNT(*) FROM ORDERS").await, "2");
    // The same user's second login is another session.
    let mut ana2 = login(&f, "ana", ANA_PASSWORD).await;
    assert_eq!(scalar(&mut ana2, tz).await, before);
    // RESET returns the session to the server's value.
    query(&mut ana, "RESET datafusion.execution.time_zone")
        .await
        .unwrap();
    assert_eq!(scalar(&mut ana, tz).await, before);
    // A refused SET is audited.
    let message = refused(
        &mut ana,
        "SET datafusion.runtime.memory_limit = '100G'",
        Code::PermissionDenied,
    )
    .await;
    assert!(message.contains("not allowed"), "{message}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("memory_limit") && l.contains(r#""decision":"deny""#)),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn option_secrets_are_redacted_in_logs_and_system_queries() {
    let f = start();
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    let literal = "LiteralPw-0c9d";
    let sql = format!(
        "CREATE EXTERNAL TABLE lit (id INT) STORED AS POSTGRES LOCATION 'public.nothere' \
         OPTIONS ('host' '127.0.0.1', 'port' '1', 'user' 'u', 'password' '{literal}', 'connect_timeout' '1', 'retries' '0')"
    );
    let _ = query(&mut root, &sql).await;
    let url = format!(
        "CREATE EXTERNAL TABLE lit2 (id INT) STORED AS POSTGRES LOCATION 'public.nothere' \
         OPTIONS ('connection' 'postgresql://u:{literal}@127.0.0.1:1/db', 'connect_timeout' '1', 'retries' '0')"
    );
    let _ = query(&mut root, &url).await;
    let batches = query(&mut root, "SELECT sql FROM system.queries")
        .await
        .unwrap();
    let mut texts = Vec::new();
    for b in &batches {
        let col = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        texts.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    let all = texts.join("\n");
    assert!(all.contains("lit2"), "{all}");
    assert!(
        !all.contains(literal),
        "system.queries shows the password:\n{all}"
    );
    let log = f.server.wait_for_log("lit2");
    let log = log + &f.server.drain_log().join("\n");
    assert!(
        !log.contains(literal),
        "the statement log shows the password:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_is_per_user_and_address_and_covers_remembered_logins() {
    let f = start();
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    // A client sending Basic on every call: its login is remembered after the first check.
    let mut ana = client(&f.server).await;
    ana.set_header("authorization", basic("ana", ANA_PASSWORD));
    query(&mut ana, "SELECT 1").await.unwrap();
    for _ in 0..3 {
        let mut bad = client(&f.server).await;
        assert!(bad.handshake("ana", "wrong").await.is_err());
    }
    let err = query(&mut ana, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Another user behind the same address is not locked out.
    let mut root = client(&f.server).await;
    root.handshake("root", ROOT_PASSWORD).await.unwrap();
    query(&mut root, "SELECT 1").await.unwrap();
    // Many concurrent guesses for one user stop at the limit instead of all being checked.
    let started = std::time::Instant::now();
    let mut guesses = Vec::new();
    for i in 0..64 {
        let server_uri = f.server.uri();
        guesses.push(tokio::spawn(async move {
            let channel = Channel::from_shared(server_uri)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut c = FlightSqlServiceClient::new(channel);
            c.handshake("root", &format!("guess-{i}")).await.is_err()
        }));
    }
    for g in guesses {
        assert!(g.await.unwrap());
    }
    // At most the limit plus one check per core ran: far from 64 argon2 checks.
    let elapsed = started.elapsed();
    let audit = {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap()
    };
    let checked = audit
        .lines()
        .filter(|l| l.contains(r#""user":"root""#) && l.contains("invalid user name or password"))
        .count();
    assert!(
        checked <= 3 + 4,
        "{checked} password checks ran ({elapsed:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_lists_only_what_the_caller_may_see() {
    let f = start();
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    let names = |batches: Vec<arrow::array::RecordBatch>| {
        pretty_format_batches(&batches).unwrap().to_string()
    };
    for sql in [
        "SELECT table_name FROM information_schema.tables",
        "SELECT table_name, column_name FROM information_schema.columns",
        "SHOW TABLES",
    ] {
        let seen = names(query(&mut ana, sql).await.unwrap());
        assert!(seen.contains("orders"), "{sql}: {seen}");
        assert!(
            !seen.contains("payroll"),
            "{sql}: ana sees payroll:\n{seen}"
        );
        let all = names(query(&mut root, sql).await.unwrap());
        assert!(all.contains("payroll"), "{sql}: {all}");
    }
    // Naming the table still gets the policy's answer, not "not found".
    refused(&mut ana, "SELECT * FROM payroll", Code::PermissionDenied).await;
}
