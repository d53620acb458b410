//! FlowEngine core: typed configuration, the DataFusion session, and the pipeline runner.
//!
//! The engine never speaks gRPC or HTTP. It builds a DataFusion [`SessionContext`](datafusion::prelude::SessionContext)
//! from an [`EngineConfig`], lets connector families register themselves through the one
//! [`Connector`] extension point, and runs `.sql` pipelines statement by statement with
//! [`pipeline::Runner`].

pub mod acks;
pub mod bad_records;
pub mod bounded_values;
pub mod complexity;
pub mod config;
pub mod connector;
pub mod encryption;
pub mod error;
pub mod failure;
pub mod faults;
pub mod file_functions;
pub mod lineage;
pub mod optimizer;
pub mod pipeline;
pub mod placeholders;
pub mod profile;
pub mod progress;
pub mod secrets;
pub mod security;
pub mod server_config;
pub mod session;
pub mod staging;
pub mod state;
pub mod system;
pub mod table_defs;
pub mod tenant;

pub use acks::{AckLedger, PendingAck};
pub use config::EngineConfig;
pub use connector::{
    Connector, ConnectorRegistry, DeclaredParams, ParamKind, ParamSpec, RemoteCallStats, TableType,
};
pub use error::{EngineError, Result};
pub use secrets::{Secret, SecretStore};
pub use server_config::ServerConfig;
pub use session::{Engine, SessionScope};

/// Re-export so downstream crates use exactly the engine's DataFusion.
pub use datafusion;
