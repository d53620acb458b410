//! The admin HTTP endpoint: `GET /health` (the process is alive), `GET /ready` (catalog loaded,
//! serving, not shutting down) and `GET /metrics` (Prometheus/OpenMetrics text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::ServerState;

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

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    let pool = &state.engine.context().runtime_env().memory_pool;
    state.metrics.memory_reserved.set(pool.reserved() as u64);
    state
        .metrics
        .sync_connectors(&state.engine.remote_call_stats());
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
