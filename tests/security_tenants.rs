//! `flowengine serve` with tenants, `system.audit` and JWT logins, through the arrow-rs Flight
//! SQL client: each tenant sees and touches only its own catalog (also through wildcards,
//! `information_schema` and metadata calls) within its memory quota; admins read the audit log
//! as a table; identity-provider JWTs are checked for signature, key, algorithm, issuer,
//! audience and expiry.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, StringArray};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::flight::{client, fetch, query};
use common::server::ServerProcess;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;
use tonic::transport::Channel;

const ROOT_PASSWORD: &str = "root-pw-Xy9";
const ALICE_PASSWORD: &str = "alice-pw-1";
const GABE_PASSWORD: &str = "gabe-pw-2";
const ANA_PASSWORD: &str = "ana-pw-3";
const ISSUER: &str = "https://sso.example.test/";
const AUDIENCE: &str = "flowengine";

struct Fixture {
    server: ServerProcess,
    dir: tempfile::TempDir,
    signing_key: std::path::PathBuf,
    other_key: std::path::PathBuf,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (signing_key, n) = common::certs::rsa_key(dir.path(), "idp");
    let (other_key, _) = common::certs::rsa_key(dir.path(), "attacker");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]})
            .to_string(),
    )
    .unwrap();
    let catalog = dir.path().join("catalog.sql");
    std::fs::write(
        &catalog,
        "CREATE TABLE shared (x INT) AS VALUES (1);
         CREATE TABLE acme.public.orders (id INT, item VARCHAR) AS VALUES (1, 'anvil'), (2, 'rocket');
         CREATE TABLE globex.public.orders (id INT, item VARCHAR) AS VALUES (9, 'globe');",
    )
    .unwrap();
    let config = format!(
        r#"
[security]
audit_file = "{audit}"

[security.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{jwks}"
roles_claim = "roles"
tenant_claim = "tenant"

[[security.tenants]]
name = "acme"
memory_limit = "16MiB"

[[security.tenants]]
name = "globex"
max_concurrent_queries = 2

[[security.users]]
name = "root"
password_hash = "{root}"
roles = ["admin"]

[[security.users]]
name = "alice"
password_hash = "{alice}"
roles = ["tenant_rw"]
tenant = "acme"

[[security.users]]
name = "gabe"
password_hash = "{gabe}"
roles = ["everything"]
tenant = "globex"

[[security.users]]
name = "ana"
password_hash = "{ana}"
roles = ["everything"]

[[security.roles]]
name = "tenant_rw"
grants = [{{ privileges = ["ALL"], on = "public.*" }}]

[[security.roles]]
name = "everything"
grants = [{{ privileges = ["ALL"], on = "*.*.*" }}]
"#,
        audit = dir.path().join("audit.jsonl").display(),
        jwks = jwks.display(),
        root = common::hash_password(ROOT_PASSWORD),
        alice = common::hash_password(ALICE_PASSWORD),
        gabe = common::hash_password(GABE_PASSWORD),
        ana = common::hash_password(ANA_PASSWORD),
    );
    let server = ServerProcess::start(&[catalog.as_path()], &config);
    Fixture {
        server,
        dir,
        signing_key,
        other_key,
    }
}

async fn login(f: &Fixture, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = client(&f.server).await;
    c.handshake(user, password).await.unwrap();
    c
}

async fn denied(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> tonic::Status {
    let err = query(c, sql).await.expect_err(sql);
    assert_eq!(err.code(), Code::PermissionDenied, "{sql}: {err}");
    err
}

async fn text(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let batches = query(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

async fn table_names(c: &mut FlightSqlServiceClient<Channel>) -> Vec<String> {
    let info = c
        .get_tables(CommandGetTables {
            include_schema: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let batches = fetch(c, info).await.unwrap();
    let mut names = Vec::new();
    for b in &batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (cat, schema, table) = (
            col("catalog_name"),
            col("db_schema_name"),
            col("table_name"),
        );
        for i in 0..b.num_rows() {
            names.push(format!(
                "{}.{}.{}",
                cat.value(i),
                schema.value(i),
                table.value(i)
            ));
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_catalog_within_their_quota() {
    let f = start();
    let mut alice = login(&f, "alice", ALICE_PASSWORD).await;
    let mut gabe = login(&f, "gabe", GABE_PASSWORD).await;

    // Unqualified names are the tenant's own catalog.
    let a = text(&mut alice, "SELECT id, item FROM orders ORDER BY id").await;
    assert!(
        a.contains("anvil") && a.contains("rocket") && !a.contains("globe"),
        "{a}"
    );
    let g = text(&mut gabe, "SELECT id, item FROM orders").await;
    assert!(g.contains("globe") && !g.contains("anvil"), "{g}");

    // Tables a tenant creates land in its catalog.
    query(&mut alice, "CREATE TABLE notes (n INT) AS VALUES (7)")
        .await
        .unwrap();
    let notes = text(&mut alice, "SELECT n FROM acme.public.notes").await;
    assert!(notes.contains('7'), "{notes}");

    // Another tenant's tables and the shared catalog are out of reach, even for a `*.*.*`
    // grant, directly, through a join, a subquery and a UNION.
    for sql in [
        "SELECT * FROM acme.public.orders",
        "SELECT * FROM acme.public.notes",
        "SELECT * FROM datafusion.public.shared",
        "SELECT o.id FROM orders o JOIN acme.public.orders a ON o.id = a.id",
        "SELECT * FROM orders WHERE id IN (SELECT id FROM acme.public.orders)",
        "SELECT id FROM orders UNION ALL SELECT id FROM acme.public.orders",
        "INSERT INTO acme.public.notes VALUES (8)",
        "CREATE TABLE acme.public.planted AS VALUES (1)",
    ] {
        denied(&mut gabe, sql).await;
    }
    denied(&mut alice, "SELECT * FROM globex.public.orders").await;

    // information_schema and GetTables list only the tenant's own tables.
    let listed = text(
        &mut gabe,
        "SELECT DISTINCT table_catalog FROM information_schema.tables",
    )
    .await;
    assert!(
        listed.contains("globex") && !listed.contains("acme") && !listed.contains("datafusion"),
        "{listed}"
    );
    let tables = table_names(&mut gabe).await;
    assert!(
        tables.iter().all(|t| t.starts_with("globex."))
            && tables.contains(&"globex.public.orders".to_string()),
        "{tables:?}"
    );
    let tables = table_names(&mut alice).await;
    assert!(tables.iter().all(|t| t.starts_with("acme.")), "{tables:?}");

    // The memory quota: what the shared pool allows an admin, the tenant's 16 MiB does not.
    let heavy = "SELECT cardinality(array_agg(value)) AS n FROM range(10000000)";
    let err = query(&mut alice, heavy).await.expect_err("over quota");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("tenant `acme` memory quota"),
        "{err}"
    );
    let mut root = login(&f, "root", ROOT_PASSWORD).await;
    assert!(text(&mut root, heavy).await.contains('1'));
    // The tenant still works after the refusal.
    assert!(
        text(&mut alice, "SELECT count(*) FROM orders")
            .await
            .contains('2')
    );

    // Admins see every tenant.
    let all = table_names(&mut root).await;
    for t in [
        "acme.public.orders",
        "globex.public.orders",
        "datafusion.public.shared",
    ] {
        assert!(all.contains(&t.to_string()), "{t} missing from {all:?}");
    }

    // system.audit: admins only (a `*.*.*` grant does not reach the system schema).
    let mut ana = login(&f, "ana", ANA_PASSWORD).await;
    assert!(text(&mut ana, "SELECT x FROM shared").await.contains('1'));
    denied(&mut ana, "SELECT * FROM system.audit").await;
    denied(&mut alice, "SELECT * FROM datafusion.system.audit").await;
    let audit = text(
        &mut root,
        "SELECT user, tenant, decision, reason FROM system.audit \
         WHERE event = 'statement' AND user = 'gabe' AND decision = 'deny' ORDER BY time",
    )
    .await;
    assert!(
        audit.contains("globex") && audit.contains("acme.public.orders"),
        "{audit}"
    );
    let counts = text(
        &mut root,
        "SELECT count(*) AS n FROM system.audit WHERE tenant = 'acme' AND decision = 'allow'",
    )
    .await;
    assert!(!counts.contains("| 0 "), "{counts}");
    // The file itself carries the tenant on each tenant statement.
    let file = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        file.lines()
            .any(|l| l.contains("\"user\":\"alice\"") && l.contains("\"tenant\":\"acme\""))
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(key: &std::path::Path, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let pem = std::fs::read(key).unwrap();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now(),
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

async fn with_token(f: &Fixture, token: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = client(&f.server).await;
    c.set_token(token.to_string());
    c
}

async fn refused(f: &Fixture, token: &str, expect: &str) {
    let mut c = with_token(f, token).await;
    let err = query(&mut c, "SELECT 1").await.expect_err(expect);
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains(expect), "expected `{expect}`: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_provider_jwts_are_verified() {
    let f = start();
    // A valid token: roles and tenant from its claims.
    let good = jwt(
        &f.signing_key,
        "k1",
        claims(
            "sso-ana",
            serde_json::json!({"roles": ["everything", "admin-wannabe"]}),
        ),
    );
    let mut sso = with_token(&f, &good).await;
    assert!(text(&mut sso, "SELECT x FROM shared").await.contains('1'));
    let tenant_token = jwt(
        &f.signing_key,
        "k1",
        claims(
            "sso-gabe",
            serde_json::json!({"roles": ["everything"], "tenant": "globex"}),
        ),
    );
    let mut t = with_token(&f, &tenant_token).await;
    assert!(
        text(&mut t, "SELECT item FROM orders")
            .await
            .contains("globe")
    );
    denied(&mut t, "SELECT * FROM acme.public.orders").await;
    // A configured user logging in through the identity provider keeps its configured roles.
    let root = jwt(&f.signing_key, "k1", claims("root", serde_json::json!({})));
    let mut r = with_token(&f, &root).await;
    assert!(
        text(&mut r, "SELECT count(*) FROM acme.public.orders")
            .await
            .contains('2')
    );
    // A token whose roles name nothing configured gets no access.
    let nobody = jwt(
        &f.signing_key,
        "k1",
        claims("sso-x", serde_json::json!({"roles": ["admin2"]})),
    );
    let mut n = with_token(&f, &nobody).await;
    denied(&mut n, "SELECT x FROM shared").await;
    // Basic-only clients may send the JWT as the password.
    let mut basic = client(&f.server).await;
    basic.handshake("ignored", &good).await.unwrap();
    assert!(text(&mut basic, "SELECT x FROM shared").await.contains('1'));

    // Negative cases.
    let forged = jwt(&f.other_key, "k1", claims("sso-ana", serde_json::json!({})));
    refused(&f, &forged, "signature does not verify").await;
    let unknown_kid = jwt(
        &f.signing_key,
        "k9",
        claims("sso-ana", serde_json::json!({})),
    );
    refused(&f, &unknown_kid, "unknown key id").await;
    let mut wrong_aud = claims("sso-ana", serde_json::json!({}));
    wrong_aud["aud"] = "someone-else".into();
    refused(&f, &jwt(&f.signing_key, "k1", wrong_aud), "audience").await;
    let mut wrong_iss = claims("sso-ana", serde_json::json!({}));
    wrong_iss["iss"] = "https://evil.example/".into();
    refused(&f, &jwt(&f.signing_key, "k1", wrong_iss), "issuer").await;
    let mut expired = claims("sso-ana", serde_json::json!({}));
    expired["exp"] = (now() - 3600).into();
    refused(&f, &jwt(&f.signing_key, "k1", expired), "expired").await;
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("sso-ana", serde_json::json!({})),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    refused(&f, &hs, "not accepted").await;

    // Refusals are audited without the token.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("JWT expired") && audit.contains("signature does not verify"));
    for token in [&good, &forged, &hs] {
        assert!(!audit.contains(token.as_str()));
    }
    let log: Vec<String> = f.server.log.try_iter().collect();
    assert!(log.iter().all(|l| !l.contains(&good)), "a token was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_after_their_ttl() {
    let config = format!(
        "[security]\ntoken_ttl_secs = 1\n\n[[security.users]]\nname = \"root\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n",
        common::hash_password(ROOT_PASSWORD)
    );
    let server = ServerProcess::start(&[], &config);
    let mut c = client(&server).await;
    c.handshake("root", ROOT_PASSWORD).await.unwrap();
    query(&mut c, "SELECT 1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let err = query(&mut c, "SELECT 1")
        .await
        .expect_err("token past its TTL");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("expired"), "{err}");
}
