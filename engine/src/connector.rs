//! The one extension point for source and sink families, and the explicit registry that holds them.
//!
//! A connector registers DataFusion extension points (file formats, table provider factories,
//! object stores, functions) into the session being built. Adding a family is one module in the
//! `connectors` crate and one line where its registry is assembled; nothing here is global.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use datafusion::error::Result as DfResult;
use datafusion::execution::session_state::SessionStateBuilder;

use crate::error::{EngineError, Result};

/// A documented parameter a connector understands (an `OPTIONS` key or a config key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Secret parameters are never printed (logs, errors, `EXPLAIN`).
    pub secret: bool,
}

/// A family of sources and sinks (`files`, `postgres`, `s3`, `nats`, ...).
pub trait Connector: Debug + Send + Sync {
    /// Short name, used in messages and docs.
    fn name(&self) -> &'static str;
    /// The parameters it understands.
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    /// Register this family's factories, formats, stores and functions.
    fn register(&self, builder: SessionStateBuilder) -> DfResult<SessionStateBuilder>;
}

/// The connectors a session is built with, in registration order.
#[derive(Debug, Clone, Default)]
pub struct ConnectorRegistry {
    connectors: Vec<Arc<dyn Connector>>,
}

impl ConnectorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a connector family; later registrations may override earlier ones.
    pub fn with(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connectors.push(connector);
        self
    }

    pub fn connectors(&self) -> &[Arc<dyn Connector>] {
        &self.connectors
    }

    /// Run every connector's registration against `builder`.
    pub fn register_all(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        for c in &self.connectors {
            builder = c
                .register(builder)
                .map_err(|e| EngineError::RegisterConnector {
                    connector: c.name(),
                    source: Box::new(e),
                })?;
        }
        Ok(builder)
    }
}

/// Counts of the remote calls connectors retried or refused, shared by every connector of a
/// session (a session config extension that [`crate::Engine`] installs) and exported by
/// `flowengine serve` at `/metrics`.
#[derive(Debug, Default)]
pub struct RemoteCallStats {
    /// Calls retried after a transient failure.
    pub retries: AtomicU64,
    /// Circuit breakers opened (an endpoint failed `circuit_failures` times in a row).
    pub circuit_opened: AtomicU64,
    /// Calls refused at once by an open breaker.
    pub fast_failures: AtomicU64,
}

impl RemoteCallStats {
    /// The session's counters, as registered in `builder`'s configuration; fresh ones when the
    /// session has none (a session not built by [`crate::Engine`]).
    pub fn of(builder: &mut SessionStateBuilder) -> Arc<Self> {
        builder
            .config()
            .as_ref()
            .and_then(|c| c.get_extension::<Self>())
            .unwrap_or_default()
    }
}
