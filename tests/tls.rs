//! TLS on `flowengine serve`: a trusted certificate works, an untrusted one and plain text do
//! not; mutual TLS refuses clients without a certificate (or with one from another CA) and maps
//! the certificate's common name to a user; certificates reload on SIGHUP. The admin endpoint
//! serves HTTPS too.

mod common;

use std::path::Path;
use std::time::Duration;

use arrow::util::pretty::pretty_format_batches;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::flight::query;
use common::server::ServerProcess;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const PASSWORD: &str = "tls-test-pw";

fn config(dir: &Path, client_ca: bool) -> String {
    let hash = common::hash_password(PASSWORD);
    let ca_line = if client_ca {
        format!("client_ca_file = \"{}\"\n", dir.join("ca.pem").display())
    } else {
        String::new()
    };
    format!(
        r#"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
{ca_line}
[security]
[[security.users]]
name = "ana"
password_hash = "{hash}"
roles = ["analyst"]
attributes = {{ region = "eu" }}

[[security.roles]]
name = "analyst"
grants = [{{ privileges = ["SELECT"], on = "orders" }}]
row_filters = [{{ table = "orders", filter = "region = current_user_attribute('region')" }}]
"#,
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
    )
}

fn certificates(dir: &Path) {
    common::certs::ca(dir, "ca");
    common::certs::leaf(dir, "ca", "server", "localhost", false);
    common::certs::leaf(dir, "ca", "ana", "ana", true);
    common::certs::ca(dir, "other");
    common::certs::leaf(dir, "other", "mallory", "ana", true);
    common::certs::leaf(dir, "other", "server2", "localhost", false);
}

fn catalog(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("catalog.sql");
    std::fs::write(
        &path,
        "CREATE TABLE orders (id INT, region VARCHAR) AS VALUES (1, 'eu'), (2, 'us'), (3, 'eu');",
    )
    .unwrap();
    path
}

async fn connect(
    server: &ServerProcess,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("https://{}", server.flight))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(FlightSqlServiceClient::new_from_inner(
        FlightServiceClient::new(channel),
    ))
}

fn sum_of(batches: &[arrow::array::RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_trusted_untrusted_plaintext_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = ServerProcess::start(&[catalog(dir.path()).as_path()], &config(dir.path(), false));
    // Trusted: log in and query.
    let mut c = connect(&server, &dir.path().join("ca.pem"), None)
        .await
        .unwrap();
    c.handshake("ana", PASSWORD).await.unwrap();
    let out = sum_of(
        &query(&mut c, "SELECT count(*) AS n FROM orders")
            .await
            .unwrap(),
    );
    assert!(out.contains("| 2 |"), "{out}");
    // A client trusting another CA refuses the server's certificate.
    let refused = match connect(&server, &dir.path().join("other.pem"), None).await {
        Err(e) => e,
        Ok(mut c) => c.handshake("ana", PASSWORD).await.unwrap_err().to_string(),
    };
    // The client's own check fails: the server's certificate is from a CA it does not trust.
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    // Plain text gets nowhere.
    let channel = Channel::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = channel {
        let mut plain = FlightSqlServiceClient::new_from_inner(FlightServiceClient::new(channel));
        assert!(plain.handshake("ana", PASSWORD).await.is_err());
    }
    // The admin endpoint speaks HTTPS with the same certificate.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .arg(format!("https://localhost:{}/health", server.admin.port()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reload on SIGHUP: a certificate from the other CA replaces the first.
    std::fs::copy(
        dir.path().join("server2.pem"),
        dir.path().join("server.pem"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("server2.key"),
        dir.path().join("server.key"),
    )
    .unwrap();
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let log = server.wait_for_log("TLS certificate reloaded");
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    let mut c = connect(&server, &dir.path().join("other.pem"), None)
        .await
        .unwrap();
    c.handshake("ana", PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_requires_a_client_certificate_and_maps_it_to_a_user() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = ServerProcess::start(&[catalog(dir.path()).as_path()], &config(dir.path(), true));
    let ca = dir.path().join("ca.pem");
    // No client certificate: the TLS handshake is refused.
    let no_cert = match connect(&server, &ca, None).await {
        Err(e) => e,
        Ok(mut c) => c.handshake("ana", PASSWORD).await.unwrap_err().to_string(),
    };
    // Refused in the TLS handshake, never as far as authentication.
    assert_refused_in_handshake(&no_cert);
    assert!(!no_cert.contains("Unauthenticated"), "{no_cert}");
    // A certificate from another CA: refused.
    let d = dir.path();
    let wrong = match connect(
        &server,
        &ca,
        Some((&d.join("mallory.pem"), &d.join("mallory.key"))),
    )
    .await
    {
        Err(e) => e,
        Ok(mut c) => query(&mut c, "SELECT 1").await.unwrap_err().to_string(),
    };
    // The server's check fails: the client's certificate is from a CA it does not trust.
    assert_refused_in_handshake(&wrong);
    // ana's certificate: authenticated as ana without a password (her row filter applies).
    let mut c = connect(&server, &ca, Some((&d.join("ana.pem"), &d.join("ana.key"))))
        .await
        .unwrap();
    let out = sum_of(
        &query(&mut c, "SELECT count(*) AS n FROM orders")
            .await
            .unwrap(),
    );
    assert!(out.contains("| 2 |"), "{out}");
}

/// `err` is a connection the server's TLS handshake refused, not a later refusal. What the
/// client sees depends on timing: the server's alert, or a closed, reset or cancelled connection.
fn assert_refused_in_handshake(err: &str) {
    let lower = err.to_ascii_lowercase();
    assert!(
        [
            "certificaterequired",
            "handshakefailure",
            "unknownca",
            "badcertificate",
            "broken pipe",
            "reset",
            "eof",
            "closed",
            "cancel",
        ]
        .iter()
        .any(|r| lower.contains(r)),
        "{err}"
    );
    assert!(
        !err.contains("Unauthenticated") && !err.contains("PermissionDenied"),
        "{err}"
    );
}
