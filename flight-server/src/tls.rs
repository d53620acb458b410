//! TLS for the Flight SQL listener and the admin endpoint (rustls, ring), with certificates
//! reloaded on SIGHUP or when the files change, and optional mutual TLS: with a client CA
//! configured, clients must present a certificate it signed, and the certificate's subject
//! common name may stand for a configured user ([`user_of_certificate`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use engine::server_config::TlsConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How often certificate files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// The server certificate currently served; swapped on reload.
#[derive(Debug)]
struct Reloadable {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn load_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError(format!("cannot read {}: {e}", p.display())))
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "{}: not a PEM certificate chain: {e}",
                cert_file.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate found",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| {
        TlsError(format!(
            "{}: not a PEM private key: {e}",
            key_file.display()
        ))
    })?;
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError(format!("{}: unusable private key: {e}", key_file.display())))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn modified(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// A TLS acceptor whose certificate follows the files.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Build from `[server.tls]`; starts a task reloading the certificate on SIGHUP or change.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let current = load_key(&config.cert_file, &config.key_file)?;
        let resolver = Arc::new(Reloadable {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: RwLock::new(current),
        });
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &config.client_ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| TlsError(format!("cannot read {}: {e}", ca.display())))?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        TlsError(format!("{}: not a PEM certificate: {e}", ca.display()))
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // gRPC runs over HTTP/2; the admin endpoint speaks HTTP/1.1.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(watch(resolver));
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// TLS connections accepted on `listener`, each handshake in its own task (a slow or
    /// failing client never holds up the others; failures are logged).
    pub(crate) fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static
    {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(client = %peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::warn!(client = %peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) })
    }

    /// An axum listener serving TLS (the admin endpoint).
    pub(crate) fn admin_listener(&self, listener: TcpListener) -> AdminTlsListener {
        let local = listener.local_addr().ok();
        AdminTlsListener {
            incoming: Box::pin(self.incoming(listener)),
            local,
        }
    }
}

async fn watch(resolver: Arc<Reloadable>) {
    let files = [resolver.cert_file.as_path(), resolver.key_file.as_path()];
    let mut seen = modified(&files);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let reason = tokio::select! {
            () = signalled => "SIGHUP",
            () = tokio::time::sleep(WATCH_EVERY) => "file change",
        };
        let now = modified(&files);
        if reason == "file change" && now == seen {
            continue;
        }
        seen = now;
        match load_key(&resolver.cert_file, &resolver.key_file) {
            Ok(key) => {
                if let Ok(mut current) = resolver.current.write() {
                    *current = key;
                }
                tracing::info!(reason, "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(
                reason,
                "TLS certificate not reloaded, keeping the old one: {e}"
            ),
        }
    }
}

/// The admin endpoint's TLS listener.
pub(crate) struct AdminTlsListener {
    incoming: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send>,
    >,
    local: Option<SocketAddr>,
}

impl axum::serve::Listener for AdminTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local
            .ok_or_else(|| std::io::Error::other("admin listener has no local address"))
    }
}

/// The common name of a client certificate's subject, if it has one.
pub(crate) fn user_of_certificate(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}
