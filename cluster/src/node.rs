//! Cluster nodes: Apache DataFusion Ballista's scheduler and executor, run inside FlowEngine's
//! process (`flowengine scheduler`, `flowengine executor`) so one artifact deploys everything.
//! Queries reach them through a cluster session ([`crate::engine`]).
//!
//! Both read object stores the way a single node does: every session's config carries the store
//! options of its tables ([`connectors::cloud::SharedStoreOptions`]); each node builds those
//! stores with secret references resolved from its own `--config` (`secrets_file`) and
//! `FLOWENGINE_SECRET_*` variables, and any other cloud URL from its environment.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_core::utils::default_session_builder;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use connectors::cloud::{NodeStores, SharedStoreOptions};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use engine::EngineConfig;
use engine::staging::{StagingOptions, StagingRegistry, WriteTxn};

use crate::ClusterError;
use crate::tables::{NodeTables, ScanCodec, TableCodec};

/// The largest gRPC message a node takes or sends: task plans carry the rows a client read.
const GRPC_MESSAGE_LIMIT: u32 = engine::config::CLUSTER_GRPC_MESSAGE_LIMIT as u32;

/// The config a node starts each session from: Ballista's, able to receive the session's
/// shared store options.
fn node_session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(SharedStoreOptions::default())
        .with_option_extension(StagingOptions::default())
        .with_option_extension(engine::optimizer::options::OptimizerOptions::default())
}

/// What a node reads with: its object stores, resolving secret references from its own
/// configuration, and its connectors for FlowEngine's own tables.
struct Node {
    stores: Arc<NodeStores>,
    tables: Arc<NodeTables>,
}

fn node(config: &EngineConfig) -> Result<Node, ClusterError> {
    let secrets = engine::SecretStore::load(config.secrets_file.as_deref())
        .map_err(|e| ClusterError::Config(format!("secrets_file: {e}")))?;
    Ok(Node {
        stores: Arc::new(NodeStores::new(secrets)),
        tables: Arc::new(NodeTables::new(config.clone())),
    })
}

impl Node {
    /// Ballista's codecs plus FlowEngine's tables (see [`crate::tables`]).
    fn codecs(
        &self,
    ) -> (
        Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>,
        Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
    ) {
        (
            Arc::new(TableCodec::new(
                Arc::new(BallistaLogicalExtensionCodec::default()),
                None,
            )),
            Arc::new(ScanCodec::new(
                Arc::new(BallistaPhysicalExtensionCodec::default()),
                Arc::clone(&self.tables),
            )),
        )
    }
}

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Where it listens (gRPC for clients and executors).
    pub bind: SocketAddr,
    /// The host name executors and clients reach it by (default: the bind host).
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is lost and its tasks run elsewhere.
    pub executor_timeout_secs: u64,
    /// Attempts of one task before its job fails.
    pub task_max_failures: usize,
}

/// How to run an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Its Arrow Flight service (shuffle data for other executors).
    pub bind: SocketAddr,
    /// Its gRPC service, where the scheduler pushes tasks.
    pub grpc_port: u16,
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// The host name the scheduler and other executors reach it by (default: the bind host).
    pub external_host: Option<String>,
    /// Tasks run at once (default: the number of cores).
    pub concurrent_tasks: Option<usize>,
    /// Memory for all tasks together, in bytes.
    pub memory_limit: Option<u64>,
    /// Directory for shuffle files (default: a temporary directory).
    pub work_dir: Option<std::path::PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_secs: u64,
}

/// Run a scheduler until `shutdown` completes.
pub async fn scheduler(
    engine_config: &EngineConfig,
    args: &SchedulerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClusterError> {
    let addr = args.bind;
    let node = node(engine_config)?;
    let (logical_codec, physical_codec) = node.codecs();
    let stores = node.stores;
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: args
            .external_host
            .clone()
            .unwrap_or_else(|| addr.ip().to_string()),
        scheduling_policy: TaskSchedulingPolicy::PushStaged,
        executor_timeout_seconds: args.executor_timeout_secs,
        // Look for lost executors several times per timeout.
        expire_dead_executor_interval_seconds: (args.executor_timeout_secs / 4).max(1),
        no_executors_grace_period_seconds: args.executor_timeout_secs,
        task_max_failures: args.task_max_failures,
        override_config_producer: Some(Arc::new(node_session_config)),
        override_logical_codec: Some(logical_codec),
        override_physical_codec: Some(physical_codec),
        // A plan may carry rows the client read (`cluster_inline_limit`), to the scheduler and
        // in each task it sends on.
        grpc_server_max_decoding_message_size: GRPC_MESSAGE_LIMIT,
        grpc_server_max_encoding_message_size: GRPC_MESSAGE_LIMIT,
        grpc_client_max_message_size: GRPC_MESSAGE_LIMIT,
        // The scheduler lists a table's files while planning: give it the session's stores.
        override_session_builder: Some(Arc::new(move |mut config: SessionConfig| {
            crate::distributable(&mut config);
            let registry = stores.registry(&config)?;
            let state = default_session_builder(config)?;
            let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
                .with_object_store_registry(registry)
                .build_arc()?;
            Ok(SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime)
                .build())
        })),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError::Start {
            what: "the scheduler".into(),
            message: e.to_string(),
        })?;
    eprintln!("flowengine: scheduler listening on df://{addr}");
    tokio::select! {
        served = start_server(cluster, addr, Arc::new(config)) => {
            served.map_err(|e| ClusterError::Start {
                what: format!("the scheduler on {addr}"),
                message: e.to_string(),
            })?;
        }
        () = shutdown => {
            eprintln!("flowengine: scheduler stopped");
        }
    }
    Ok(())
}

/// Run an executor until its process ends.
pub async fn executor(
    engine_config: &EngineConfig,
    args: &ExecutorOptions,
) -> Result<(), ClusterError> {
    let flight = args.bind;
    let node = node(engine_config)?;
    let (logical_codec, physical_codec) = node.codecs();
    let stores = node.stores;
    let (scheduler_host, scheduler_port) = args.scheduler.clone();
    let grpc_port = args.grpc_port;
    let cores = engine::config::num_cores();
    let config = ExecutorProcessConfig {
        bind_host: flight.ip().to_string(),
        external_host: Some(
            args.external_host
                .clone()
                .unwrap_or_else(|| flight.ip().to_string()),
        ),
        port: flight.port(),
        grpc_port,
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: args.concurrent_tasks.unwrap_or(cores).max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir: args.work_dir.as_ref().map(|d| d.display().to_string()),
        executor_heartbeat_interval_seconds: args.heartbeat_secs.max(1),
        memory_pool_size: args.memory_limit,
        print_thread_info: false,
        override_config_producer: Some(Arc::new(node_session_config)),
        override_logical_codec: Some(logical_codec),
        override_physical_codec: Some(physical_codec),
        grpc_max_decoding_message_size: GRPC_MESSAGE_LIMIT,
        grpc_max_encoding_message_size: GRPC_MESSAGE_LIMIT,
        // A session's stores may grow with each query (a table created later names another
        // bucket), so every task builds its runtime from its own settings; the stores
        // themselves are reused while their options are unchanged.
        session_runtime_cache_capacity: 0,
        ..Default::default()
    };
    let work_dir = match &config.work_dir {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("flowengine-executor-{}", config.executor_id)),
    };
    std::fs::create_dir_all(&work_dir).map_err(|e| ClusterError::Start {
        what: format!("the work directory {}", work_dir.display()),
        message: e.to_string(),
    })?;
    let mut config = config;
    config.work_dir = Some(work_dir.display().to_string());
    config.override_runtime_producer = Some(Arc::new(move |session: &SessionConfig| {
        let registry = stores.registry(session)?;
        // A write's objects are staged under the client's transaction id; the client renames
        // them into place once the whole job has succeeded (engine::staging).
        let registry: Arc<dyn datafusion::execution::object_store::ObjectStoreRegistry> =
            match session.options().extensions.get::<StagingOptions>() {
                Some(staging) if !staging.txn.is_empty() => Arc::new(StagingRegistry::new(
                    registry,
                    Arc::new(WriteTxn::detached(&staging.txn)),
                )),
                _ => registry,
            };
        Ok(Arc::new(
            RuntimeEnvBuilder::new()
                .with_temp_file_path(work_dir.clone())
                .with_object_store_registry(registry)
                .build()?,
        ))
    }));
    eprintln!(
        "flowengine: executor {} on {flight} (gRPC port {grpc_port}), scheduler {}:{}",
        config.executor_id, args.scheduler.0, args.scheduler.1
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Start {
            what: format!("the executor on {flight}"),
            message: e.to_string(),
        })?;
    Ok(())
}
