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

/// A documented parameter a connector understands (an `OPTIONS` key or a config key). `name`
/// may list several keys of the same kind, separated by ` / `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Secret parameters are never printed (logs, errors, `EXPLAIN`).
    pub fn secret(&self) -> bool {
        self.kind == ParamKind::Secret
    }

    /// The option keys this spec documents (`a / b (NATS)` -> `a`, `b`).
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.name
            .split(" / ")
            .map(|k| k.split(' ').next().unwrap_or(k).trim())
            .filter(|k| !k.is_empty() && !k.contains('<'))
    }
}

/// What a parameter's value is, for the boundary gate ([`crate::security::gate`]): paths are
/// checked against the allowed locations, URLs and hosts against the egress allow-list, and
/// secrets are never printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A number, a name, a flag, a JSON path inside a response: nothing the gate checks.
    Plain,
    /// A credential: never printed.
    Secret,
    /// A local file or directory the connector reads or writes.
    Path,
    /// A URL or connection string the connector connects to.
    Url,
    /// A host name or address (with a `port` option).
    Host,
}

/// One `STORED AS` type a connector provides, and what the runtime must know about it: the
/// runtime asks these declarations instead of keeping lists of type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableType {
    /// The `STORED AS` name (`POSTGRES`, `RABBITMQ`).
    pub name: &'static str,
    /// Its `LOCATION` names an object inside the source (a database table), not a path or URL:
    /// the gate checks its connection options instead.
    pub location_is_a_name: bool,
    /// Its scans consume messages, acknowledged only after the run's sinks committed: a
    /// `--follow` pipeline reading one needs no incremental view, and no cluster executor may
    /// read it.
    pub consuming: bool,
    /// A cluster's executors can open it from its definition.
    pub distributable: bool,
    /// It is written to, never read.
    pub sink_only: bool,
}

impl TableType {
    /// A type with nothing special declared.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            location_is_a_name: false,
            consuming: false,
            distributable: false,
            sink_only: false,
        }
    }
    pub const fn location_is_a_name(mut self) -> Self {
        self.location_is_a_name = true;
        self
    }
    pub const fn consuming(mut self) -> Self {
        self.consuming = true;
        self
    }
    pub const fn distributable(mut self) -> Self {
        self.distributable = true;
        self
    }
    pub const fn sink_only(mut self) -> Self {
        self.sink_only = true;
        self
    }

    /// Why a cluster's executors cannot read this type; `None` when they can.
    pub fn not_distributable(&self) -> Option<&'static str> {
        if self.distributable {
            None
        } else if self.consuming {
            Some(
                "its reads consume messages that this process acknowledges only after the run commits",
            )
        } else if self.sink_only {
            Some("it is a sink")
        } else {
            Some("its connector cannot be opened on executors")
        }
    }
}

/// The kinds every registered connector declared for its option keys, by key (a session config
/// extension): the gate reads a key's declared kind before guessing from its name.
#[derive(Debug, Default)]
pub struct DeclaredParams {
    kinds: std::collections::HashMap<String, ParamKind>,
    named_locations: std::collections::HashSet<String>,
}

impl DeclaredParams {
    /// Collect the declarations of `registry`'s connectors.
    pub fn of(registry: &ConnectorRegistry) -> Self {
        let mut kinds = std::collections::HashMap::new();
        let mut named_locations = std::collections::HashSet::new();
        for c in registry.connectors() {
            for spec in c.params() {
                for key in spec.keys() {
                    kinds.insert(key.to_ascii_lowercase(), spec.kind);
                }
            }
            named_locations.extend(
                c.table_types()
                    .iter()
                    .filter(|t| t.location_is_a_name)
                    .map(|t| t.name.to_ascii_uppercase()),
            );
        }
        Self {
            kinds,
            named_locations,
        }
    }

    /// Whether `LOCATION` of `STORED AS stored_as` names an object inside the source.
    pub fn location_is_a_name(&self, stored_as: &str) -> bool {
        self.named_locations
            .contains(&stored_as.to_ascii_uppercase())
    }

    /// The declared kind of option `key` (with or without a `format.` prefix).
    pub fn kind(&self, key: &str) -> Option<ParamKind> {
        let key = key.to_ascii_lowercase();
        self.kinds
            .get(&key)
            .or_else(|| self.kinds.get(key.strip_prefix("format.").unwrap_or(&key)))
            .or_else(|| self.kinds.get(&format!("format.{key}")))
            .copied()
    }
}

/// A family of sources and sinks (`files`, `postgres`, `s3`, `nats`, ...).
pub trait Connector: Debug + Send + Sync {
    /// Short name, used in messages and docs.
    fn name(&self) -> &'static str;
    /// The parameters it understands.
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// The `STORED AS` types it provides beyond file formats, and what each is ([`TableType`]).
    fn table_types(&self) -> Vec<TableType> {
        Vec::new()
    }
    /// Register this family's factories, formats, stores and functions.
    fn register(&self, builder: SessionStateBuilder) -> DfResult<SessionStateBuilder>;
    /// What finds where a failed read of this family's tables went wrong, if the errors of its
    /// readers do not say (see [`crate::failure`]).
    fn failure_locator(&self) -> Option<Arc<dyn crate::failure::FailureLocator>> {
        None
    }
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

    /// What the connectors declared about `STORED AS stored_as` (any case); the last
    /// registration wins.
    pub fn table_type(&self, stored_as: &str) -> Option<TableType> {
        self.connectors
            .iter()
            .rev()
            .flat_map(|c| c.table_types())
            .find(|t| t.name.eq_ignore_ascii_case(stored_as))
    }

    /// Whether a statement declares a table of a consuming type (`CREATE EXTERNAL TABLE ...
    /// STORED AS RABBITMQ`).
    pub fn declares_consuming_table(&self, sql: &str) -> bool {
        let words: Vec<&str> = sql.split_whitespace().collect();
        words.windows(3).any(|w| {
            w[0].eq_ignore_ascii_case("STORED")
                && w[1].eq_ignore_ascii_case("AS")
                && self
                    .table_type(w[2].trim_end_matches(';'))
                    .is_some_and(|t| t.consuming)
        })
    }

    /// The failure locators the connectors offer.
    pub fn failure_locators(&self) -> crate::failure::FailureLocators {
        crate::failure::FailureLocators(
            self.connectors
                .iter()
                .filter_map(|c| c.failure_locator())
                .collect(),
        )
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
