//! FlowEngine's Arrow Flight SQL server (`flowengine serve`) and its admin HTTP endpoint.
//!
//! * [`service`]: the Flight SQL handlers (queries, prepared statements with stateless handles,
//!   updates, bulk ingest, metadata, cancellation) on arrow-flight's `FlightSqlService`;
//! * [`flight_service`]: the gRPC service, adding `PollFlightInfo` for long queries;
//! * [`exec`]: running one statement with admission control, timeout, cancellation, panic
//!   isolation, metrics and a log line;
//! * [`admin`]: `/health`, `/ready`, `/metrics`.
//!
//! Planning and execution go through [`engine::Engine`]; this crate only speaks the protocols.

mod activity;
mod admin;
mod auth;
mod error;
mod exec;
mod flight_service;
mod handles;
mod ingest;
mod jwt;
mod metadata;
mod metrics;
mod params;
mod reload;
mod service;
mod split;
mod sql_info;
mod state;
mod statements;
mod tls;
pub mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use engine::security::{AuditLog, AuthMode, Policy};
use engine::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::flight_service::FlowFlightService;
use crate::service::FlowSqlService;

use crate::state::ServerState;
pub use metrics::{BatchFigures, PipelineMetrics};
pub use reload::{RELOADABLE, ReloadReport, Reloader};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Flight SQL server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(
        "refusing to serve without authentication on {addr}, which is not a loopback address: \
         configure users (security.auth = \"password\") or set security.allow_insecure_bind = true"
    )]
    InsecureBind { addr: SocketAddr },
    #[error(
        "authentication is on (security.auth = \"password\", the default) but no users or API keys \
         are configured: add [[security.users]] (hash passwords with `flowengine user hash-password`) \
         or [[security.api_keys]] (on a loopback address, `flowengine serve` starts with a one-time \
         token instead)"
    )]
    NoUsers,
    #[error(transparent)]
    Audit(#[from] engine::security::audit::AuditError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot set up the server: {0}")]
    Setup(String),
}

/// A bound, not yet serving, server. Bind first (so port errors show at once and the admin
/// endpoint answers `/health` while the catalog loads), then [`Server::set_ready`], then
/// [`Server::run`].
pub struct Server {
    state: Arc<ServerState>,
    flight: TcpListener,
    flight_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
    tls: Option<tls::Tls>,
}

impl Server {
    /// Bind the Flight SQL and admin listeners from the engine's `[server]` configuration and
    /// start the admin endpoint.
    /// `protected` are files no SQL may reach (the configuration file); the secrets file, state
    /// directory, audit and lineage files are added here.
    pub async fn bind(engine: Arc<Engine>, protected: Vec<PathBuf>) -> Result<Self, ServeError> {
        let config = engine.config().server.clone();
        let security = engine.config().security.clone();
        if security.auth == AuthMode::Password
            && security.users.is_empty()
            && security.api_keys.is_empty()
            && security.jwt.is_none()
        {
            return Err(ServeError::NoUsers);
        }
        let flight = TcpListener::bind(&config.bind)
            .await
            .map_err(|source| ServeError::Bind {
                what: "Flight SQL",
                addr: config.bind.clone(),
                source,
            })?;
        let flight_addr = flight.local_addr().map_err(|source| ServeError::Bind {
            what: "Flight SQL",
            addr: config.bind.clone(),
            source,
        })?;
        let insecure = security.auth == AuthMode::None && !security.allow_insecure_bind;
        if insecure && !flight_addr.ip().is_loopback() {
            return Err(ServeError::InsecureBind { addr: flight_addr });
        }
        let audit = AuditLog::open(
            security.audit_file.as_deref(),
            security.audit_redact_literals,
        )?;
        let protected = protected_files(engine.config(), protected);
        let policy = Policy::new(&security, protected.clone());
        if let Some(path) = &security.audit_file {
            engine::system::register_audit_table(engine.context(), path.clone())
                .map_err(|e| ServeError::Setup(format!("system.audit: {e}")))?;
        }
        let mut tenants = std::collections::HashMap::new();
        for t in &security.tenants {
            let session = engine
                .for_tenant(&t.name, t.catalog(), t.memory_limit.map(|m| m.as_u64()))
                .map_err(|e| ServeError::Setup(format!("tenant `{}`: {e}", t.name)))?;
            tenants.insert(
                t.name.clone(),
                state::TenantRuntime::new(session, t.max_concurrent_queries),
            );
        }
        let state = Arc::new(ServerState::new(
            engine,
            config.clone(),
            policy,
            protected,
            audit,
            tenants,
        ));
        activity::register(&state).map_err(|e| ServeError::Setup(format!("system tables: {e}")))?;
        state
            .auth
            .load_jwt_keys()
            .await
            .map_err(ServeError::Setup)?;
        let admin_stop = CancellationToken::new();
        let tls = config.tls.as_ref().map(tls::Tls::new).transpose()?;
        let admin_addr = if config.admin_bind.eq_ignore_ascii_case("off") {
            None
        } else {
            let listener = TcpListener::bind(&config.admin_bind)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "the admin endpoint",
                    addr: config.admin_bind.clone(),
                    source,
                })?;
            let addr = listener.local_addr().ok();
            if insecure && addr.is_some_and(|a| !a.ip().is_loopback()) {
                return Err(ServeError::InsecureBind {
                    addr: addr.unwrap_or(flight_addr),
                });
            }
            let router = admin::router(Arc::clone(&state));
            let stop = admin_stop.clone();
            let service = router.into_make_service_with_connect_info::<admin::ClientAddr>();
            match &tls {
                Some(tls) => {
                    let listener = tls.admin_listener(listener);
                    tokio::spawn(async move {
                        let served = axum::serve(listener, service)
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await;
                        if let Err(e) = served {
                            tracing::error!("admin endpoint failed: {e}");
                        }
                    });
                }
                None => {
                    tokio::spawn(async move {
                        let served = axum::serve(listener, service)
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await;
                        if let Err(e) = served {
                            tracing::error!("admin endpoint failed: {e}");
                        }
                    });
                }
            }
            addr
        };
        Ok(Self {
            state,
            flight,
            flight_addr,
            admin_addr,
            admin_stop,
            tls,
        })
    }

    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where continuous pipelines run by this server report their micro-batches (`/metrics`).
    pub fn pipeline_metrics(&self) -> PipelineMetrics {
        self.state.metrics.pipelines.clone()
    }

    /// A handle applying reloaded configurations (SIGHUP) to this server while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: Arc::clone(&self.state),
        }
    }

    /// Mark the catalog as loaded: `/ready` answers 200.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }

    /// Serve until `shutdown` resolves; then stop accepting, give in-flight queries the
    /// configured grace period, cancel what is left, and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            state,
            flight,
            admin_stop,
            tls,
            ..
        } = self;
        let limit = state.config.max_message_size.as_u64() as usize;
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let service = FlightServiceServer::new(FlowFlightService {
            sql: FlowSqlService {
                state: Arc::clone(&state),
            },
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        let signalled = CancellationToken::new();
        let signal = {
            let state = Arc::clone(&state);
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                state.ready.store(false, Ordering::Release);
                tracing::info!(
                    running = state.running.count(),
                    grace_secs = grace.as_secs(),
                    "shutting down: no new requests; in-flight queries may finish within the grace period"
                );
                signalled.cancel();
            }
        };
        // After the grace period, cancel whatever still runs; their streams end with CANCELLED
        // and the server can close.
        let canceller = {
            let state = Arc::clone(&state);
            let signalled = signalled.clone();
            async move {
                signalled.cancelled().await;
                tokio::time::sleep(grace).await;
                let left = state.running.count();
                if left > 0 {
                    tracing::warn!(
                        cancelled = left,
                        "grace period over: cancelling running queries"
                    );
                }
                state.shutdown.cancel();
                state.admission.close();
                // Streams need a moment to deliver their final status; then stop waiting.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        };
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(trace::TraceLayer)
            .add_service(service);
        let server: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match tls {
            Some(tls) => {
                Box::pin(router.serve_with_incoming_shutdown(tls.incoming(flight), signal))
            }
            None => Box::pin(
                router.serve_with_incoming_shutdown(
                    // Without TCP_NODELAY every small response waits for the peer's delayed
                    // ACK (~40 ms per call); the builder's tcp_nodelay only applies to
                    // listeners tonic binds itself.
                    tonic::transport::server::TcpIncoming::from(flight)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(Duration::from_secs(60))),
                    signal,
                ),
            ),
        };
        let result = tokio::select! {
            r = server => r.map_err(ServeError::from),
            () = canceller => Ok(()),
        };
        admin_stop.cancel();
        tracing::info!("server stopped");
        result
    }
}

/// Files SQL must never read or write: configuration, secrets, state, audit and lineage logs.
fn protected_files(config: &EngineConfig, mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    files.extend(config.secrets_file.clone());
    files.push(config.effective_state_dir());
    files.extend(config.security.audit_file.clone());
    files.extend(config.lineage_file.clone());
    if let Some(tls) = &config.server.tls {
        files.push(tls.cert_file.clone());
        files.push(tls.key_file.clone());
        files.extend(tls.client_ca_file.clone());
    }
    files
}
