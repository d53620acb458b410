//! Cluster mode (`--cluster df://HOST:PORT`, `cluster` in flowengine.toml): every query of the
//! engine is planned in the client and executed by an Apache DataFusion Ballista scheduler and
//! its executors ([`node`]), which the `flowengine` binary runs (`flowengine scheduler`,
//! `flowengine executor`).
//!
//! Ballista ships a query's logical plan to the scheduler. File tables (`CREATE EXTERNAL TABLE
//! ... STORED AS PARQUET|CSV|JSON|AVRO|ARROW`) over paths all nodes share or object stores go
//! as they are; FlowEngine's own tables (databases, NATS subjects, REST sources) go as their
//! definitions and are opened by the executors ([`tables`]). Any other table
//! (consuming queues, tolerant CSV readers, in-memory and `system` tables) is read by this
//! process when the query runs, and its rows travel inside the plan
//! ([`client_tables`]). Plans that read only this process's own catalog tables
//! (`information_schema`, `system`) run here.

pub mod client_tables;
pub mod node;
mod session;
pub mod tables;

use engine::{ConnectorRegistry, Engine, EngineConfig};

/// What cluster mode reports as an error.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting the cluster cannot use.
    #[error("{0}")]
    Config(String),
    /// A scheduler, executor or session that could not start.
    #[error("cannot start {what}: {message}")]
    Start { what: String, message: String },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// An engine whose every plan runs on the cluster whose scheduler `url` names
/// (`df://HOST:PORT`).
pub fn engine(
    config: &EngineConfig,
    connectors: &ConnectorRegistry,
    url: &str,
) -> Result<Engine, ClusterError> {
    let (host, port) = engine::config::cluster_address(url).map_err(ClusterError::Config)?;
    let scheduler = format!("http://{host}:{port}");
    let inline_limit = config.cluster_inline_limit_bytes();
    Ok(Engine::try_new_distributed(config, connectors, &|state| {
        session::distribute(state, &scheduler, inline_limit)
    })?)
}

/// Planner settings every cluster session needs, on the client and in the scheduler's session
/// builder, because Ballista splits a physical plan into stages and re-plans joins between them:
/// - uncorrelated scalar subqueries are planned as joins: DataFusion's `ScalarSubqueryExec` cannot
///   be split from the expressions that read its result (TPC-H Q11, Q15 and Q22 failed to decode
///   on the executors);
/// - no dynamic filters from hash joins: Ballista re-runs join selection when a stage's inputs
///   are known, and DataFusion refuses to swap a join's inputs once its dynamic filter exists
///   (TPC-H Q20 failed in the scheduler).
pub fn distributable(config: &mut datafusion::prelude::SessionConfig) {
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
}
