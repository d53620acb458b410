//! The admin HTTP endpoint: `GET /health` (the process is alive), `GET /ready` (catalog loaded,
//! serving, not shutting down) and `GET /metrics` (Prometheus/OpenMetrics text). Health and
//! readiness are open (load balancers and orchestrators probe them); `/metrics` needs the same
//! credentials as Flight (bearer token, API key or Basic) of an `admin` or `monitor` user.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::ServerState;
use crate::tls::AdminTlsListener;

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The peer of an admin request, over plain TCP or TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminTlsListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminTlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Role allowed to read `/metrics` besides `admin` (for Prometheus scrapers' API keys).
const MONITOR_ROLE: &str = "monitor";

async fn metrics(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    match state.auth.authenticate(&metadata, &peer.to_string()).await {
        Ok(p) if p.is_admin() || p.roles.iter().any(|r| r == MONITOR_ROLE) => {}
        Ok(_) => {
            return (
                StatusCode::FORBIDDEN,
                "metrics need the admin or monitor role\n",
            )
                .into_response();
        }
        Err(status) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer, Basic realm=\"flowengine\"")],
                format!("{}\n", status.message()),
            )
                .into_response();
        }
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics_text(),
    )
        .into_response()
}
