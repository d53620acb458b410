//! Building the DataFusion session from an [`EngineConfig`] and the connector registry, and the
//! per-statement session views that stage writes (see [`crate::staging`]).

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryPool, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::bad_records::BadRecordLedger;
use crate::config::{EngineConfig, MemoryPoolKind};
use crate::connector::ConnectorRegistry;
use crate::error::{EngineError, Result};
use crate::secrets::SecretStore;
use crate::staging::{StagingRegistry, WriteTxn};

/// What one client session of a server adds to the shared engine (see [`Engine::for_session`]).
#[derive(Default, Clone)]
pub struct SessionScope {
    /// The session's `SET`s, in order.
    pub settings: Vec<(String, String)>,
    /// The caller's gate: connectors check redirects and next-page links against it.
    pub gate: Option<Arc<crate::security::gate::CallerGate>>,
    /// What catalog listings may show the caller (none: everything).
    pub visible: Option<crate::security::visible::Visibility>,
    /// Who runs the session's statements, as recorded with the outcomes of its checks (for
    /// example `flight-sql:alice`).
    pub origin: Option<String>,
}

/// A configured DataFusion session: the catalog and runtime every statement of a run shares.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
    config: EngineConfig,
    bad_records: Arc<BadRecordLedger>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("session_id", &self.ctx.session_id())
            .finish()
    }
}

impl Engine {
    /// Build the session: runtime (memory pool, spill directory), settings, connectors.
    pub fn try_new(config: &EngineConfig, connectors: &ConnectorRegistry) -> Result<Self> {
        let engine = Self::try_new_distributed(config, connectors, &|state| Ok(state))?;
        // `||` is built by the bounded `concat` (a cluster's executors would not know the
        // function it becomes, so only local sessions).
        crate::bounded_values::bound_string_concat(&engine.ctx);
        Ok(engine)
    }

    /// [`Engine::try_new`], with the built session state passed through `distribute` before
    /// use: the binary's cluster mode installs Ballista's query planner there, so every plan
    /// of this engine runs on the cluster.
    pub fn try_new_distributed(
        config: &EngineConfig,
        connectors: &ConnectorRegistry,
        distribute: &dyn Fn(
            datafusion::execution::SessionState,
        )
            -> datafusion::error::Result<datafusion::execution::SessionState>,
    ) -> Result<Self> {
        let build_err = |e| EngineError::BuildSession {
            source: Box::new(e),
        };
        let runtime = build_runtime(config).map_err(build_err)?;
        let bad_records = Arc::new(BadRecordLedger::new());
        let secrets = SecretStore::load(config.secrets_file.as_deref()).map_err(|e| {
            EngineError::InvalidConfig {
                origin: "secrets_file".into(),
                message: e.to_string(),
            }
        })?;
        let parquet_keys = config
            .parquet_encryption
            .resolve(&secrets)
            .map_err(|message| EngineError::InvalidConfig {
                origin: "parquet_encryption".into(),
                message,
            })?;
        let definitions = Arc::new(crate::table_defs::TableDefinitions::default());
        let session_config = session_config(config)
            .map_err(build_err)?
            .with_extension(Arc::clone(&bad_records))
            .with_extension(Arc::new(secrets))
            // What each connector's options are (paths, URLs, hosts), for the boundary gate.
            .with_extension(Arc::new(crate::connector::DeclaredParams::of(connectors)))
            .with_extension(Arc::new(connectors.failure_locators()))
            .with_extension(Arc::new(crate::RemoteCallStats::default()))
            .with_extension(Arc::new(crate::AckLedger::default()))
            // Connectors that keep local state (the MQTT spool) find the state directory here.
            .with_extension(Arc::new(config.clone()))
            // What each table was created from, for cluster nodes to open it themselves.
            .with_extension(Arc::clone(&definitions));
        let builder = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features();
        let builder =
            crate::table_defs::record_definitions(connectors.register_all(builder)?, &definitions);
        let mut state = crate::optimizer::register(builder, config).build();
        state = crate::optimizer::share_subplans(state);
        if let Some(keys) = parquet_keys {
            // Every Parquet file read or written goes through the factory: writes are
            // encrypted with the write key, reads find the key a file names.
            state
                .runtime_env()
                .register_parquet_encryption_factory(crate::encryption::FACTORY_ID, Arc::new(keys));
            state.table_options_mut().parquet.crypto.factory_id =
                Some(crate::encryption::FACTORY_ID.to_string());
        }
        let state = distribute(state).map_err(build_err)?;
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(crate::security::rewrite::CurrentUserAttribute::udf());
        // Functions that build large values are held to a per-value limit.
        crate::bounded_values::register(
            &ctx,
            crate::bounded_values::max_value_bytes(config.memory_limit_bytes()),
        );
        crate::system::register_system_table(
            &ctx,
            "settings",
            Arc::new(crate::system::SettingsTable::default()),
        )
        .map_err(build_err)?;
        Ok(Self {
            ctx,
            config: config.clone(),
            bad_records,
        })
    }

    /// This engine with files readable as tables (`SELECT * FROM 'f.csv'`, `read_csv(...)`,
    /// see [`crate::file_functions`]): for local commands, never for the server.
    pub fn with_file_functions(&self) -> Engine {
        self.with_context(crate::file_functions::enable(self.ctx.clone()))
    }

    /// The same engine over another context (a tenant's view of the session).
    pub(crate) fn with_context(&self, ctx: SessionContext) -> Engine {
        Engine {
            ctx,
            config: self.config.clone(),
            bad_records: Arc::clone(&self.bad_records),
        }
    }

    /// A view of this engine for one client session: the same catalog, functions and memory
    /// pool, with the session's own `SET`s applied to a private copy of the configuration (so
    /// they cannot change any other session's settings), the caller's gate for what
    /// connectors do after planning, and catalog listings limited to what the caller may see.
    pub fn for_session(&self, scope: &SessionScope) -> datafusion::error::Result<Engine> {
        let mut state = self.ctx.state();
        if let Some(visible) = &scope.visible {
            let list = Arc::new(crate::security::visible::VisibleCatalogs::new(
                Arc::clone(state.catalog_list()),
                Arc::clone(visible),
            ));
            state = SessionStateBuilder::new_from_existing(state)
                .with_catalog_list(list)
                .build();
        }
        if let Some(gate) = &scope.gate {
            state.config_mut().set_extension(Arc::clone(gate));
        }
        if let (Some(origin), Some(log)) = (
            &scope.origin,
            state.config().get_extension::<crate::pipeline::CheckLog>(),
        ) {
            state
                .config_mut()
                .set_extension(Arc::new(crate::pipeline::CheckLog {
                    store: Arc::clone(&log.store),
                    origin: origin.clone(),
                }));
        }
        for (key, value) in &scope.settings {
            if key.to_ascii_lowercase().starts_with("datafusion.runtime.") {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "`{key}` changes the server's runtime, which a session cannot"
                )));
            }
            state.config_mut().options_mut().set(key, value)?;
        }
        Ok(self.with_context(SessionContext::new_with_state(state)))
    }

    /// Record the outcomes of checks run outside a recorded run (`CREATE CHECK` from a client
    /// of `flowengine serve`) in `store`, under `origin` unless a session names its own.
    pub fn record_checks_in(&self, store: Arc<dyn crate::state::StateStore>, origin: &str) {
        self.ctx
            .state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(crate::pipeline::CheckLog {
                store,
                origin: origin.to_string(),
            }));
    }

    /// The shared session context (catalog, functions, runtime).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Retries and circuit-breaker counts of this session's connectors.
    pub fn remote_call_stats(&self) -> Arc<crate::RemoteCallStats> {
        self.ctx
            .state()
            .config()
            .get_extension::<crate::RemoteCallStats>()
            .unwrap_or_default()
    }

    /// Acknowledgements of consuming queue scans, settled by the pipeline runner.
    pub fn acks(&self) -> Arc<crate::AckLedger> {
        self.ctx
            .state()
            .config()
            .get_extension::<crate::AckLedger>()
            .unwrap_or_default()
    }

    /// Bad input records met by tolerant readers: per-statement counts and dead-letter tables.
    pub fn bad_records(&self) -> &Arc<BadRecordLedger> {
        &self.bad_records
    }

    /// A context sharing this session's catalog, settings and memory pool whose object stores
    /// stage every write in `txn`, so a failed statement leaves no output behind.
    pub fn staged_context(&self, txn: &Arc<WriteTxn>) -> datafusion::error::Result<SessionContext> {
        let state = self.ctx.state();
        let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
            .with_object_store_registry(Arc::new(StagingRegistry::new(
                Arc::clone(&state.runtime_env().object_store_registry),
                Arc::clone(txn),
            )))
            .build_arc()?;
        let mut state = SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .build();
        // Cluster executors stage their writes under the same transaction id. (Set on the built
        // state: a builder given a config again would register a fresh, empty default catalog
        // over the shared one.)
        state
            .config_mut()
            .options_mut()
            .set("flowengine_staging.txn", txn.id())?;
        Ok(SessionContext::new_with_state(state))
    }
}

fn build_runtime(config: &EngineConfig) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let limit = usize::try_from(config.memory_limit_bytes()).unwrap_or(usize::MAX);
    let track = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    let pool: Arc<dyn MemoryPool> = match config.memory_pool.unwrap_or_default() {
        MemoryPoolKind::Greedy => {
            Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(limit), track))
        }
        MemoryPoolKind::Fair => Arc::new(TrackConsumersPool::new(FairSpillPool::new(limit), track)),
    };
    let mut builder = RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .with_max_spill_merge_fan_in(spill_merge_fan_in(limit));
    if let Some(dir) = &config.spill_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            datafusion::error::DataFusionError::Configuration(format!(
                "cannot create spill_dir {}: {e}",
                dir.display()
            ))
        })?;
        builder = builder.with_temp_file_path(dir);
    }
    if let Some(max) = config.max_spill_size {
        builder = builder.with_max_temp_directory_size(max.as_u64());
    }
    builder.build_arc()
}

/// Pool bytes per spill file a sort merges in one pass.
const MERGE_MEMORY_PER_FILE: usize = 8 * 1024 * 1024;

/// How many spill files one merge pass of a sort opens. DataFusion's default opens as many as
/// the pool can hold, each with a batch reserved up front: under a small pool the first sort to
/// merge then takes everything left, and the operators above it (an aggregate, the other side
/// of a sort-merge join) fail to get one batch. One file per 8 MiB of pool (at least 2) leaves
/// them room; the merge takes more passes instead. 64 MiB: 8 files per pass; 12 GiB: 1536.
fn spill_merge_fan_in(pool_bytes: usize) -> usize {
    (pool_bytes / MERGE_MEMORY_PER_FILE).max(2)
}

/// FlowEngine's DataFusion settings: defaults chosen for pipelines, then the user's `[datafusion]`.
fn session_config(config: &EngineConfig) -> datafusion::error::Result<SessionConfig> {
    let mut sc = SessionConfig::new()
        .with_option_extension(crate::staging::StagingOptions::default())
        .with_option_extension(crate::optimizer::default_options(config))
        .with_information_schema(true)
        .with_target_partitions(config.effective_target_partitions())
        .with_batch_size(config.effective_batch_size());
    let opts = sc.options_mut();
    for (key, value) in FLOWENGINE_DEFAULTS {
        opts.set(key, value)?;
    }
    // The partition count was set above; only the memory limit is read again.
    opts.execution.perfect_hash_join_small_build_threshold = perfect_hash_join_range(
        config.memory_limit_bytes(),
        opts.execution.target_partitions,
    );
    for (key, value) in &config.datafusion {
        opts.set(key, value)?;
    }
    Ok(sc)
}

/// The widest build-side key range (max - min) for which a hash join on one integer key indexes
/// its build rows in an array by key instead of a hash table, whatever the keys' density
/// (`datafusion.execution.perfect_hash_join_small_build_threshold`, 1,024 in DataFusion).
///
/// A probe then costs one array read instead of hashing the key and searching the table; that
/// pays while the array (4 bytes per value in the range) stays in the CPU caches. TPC-H Q17
/// probes 6 million `lineitem` rows twice against 204 `part` keys spread over 200,000 values:
/// 0.185 s -> 0.146 s, suite 2.95 s -> 2.83-2.88 s. Sparser keys over wider ranges were slower
/// (Q08 2x with a density floor of 1%: random reads in a 24 MB array), so DataFusion's density
/// rule is unchanged. Each of a join's partitions builds its own array, so the range is also
/// kept to 1/64 of a partition's share of the memory limit (a 16 MiB limit over 4 partitions
/// allows 65,536 values); never below DataFusion's default.
pub(crate) fn perfect_hash_join_range(memory_limit: u64, partitions: usize) -> usize {
    const WIDEST: u64 = 1 << 20;
    const DATAFUSION_DEFAULT: u64 = 1024;
    let per_partition = memory_limit / partitions.max(1) as u64;
    let range = WIDEST.min(per_partition / 64).max(DATAFUSION_DEFAULT);
    usize::try_from(range).unwrap_or(usize::MAX)
}

/// DataFusion settings FlowEngine changes from DataFusion's defaults, and why.
pub const FLOWENGINE_DEFAULTS: &[(&str, &str)] = &[
    // Pipelines read CSV with headers far more often than without.
    ("datafusion.catalog.has_header", "true"),
    // Parquet filter pushdown (late materialisation) stays off, as in DataFusion: measured on
    // TPC-H SF1 here it made 17 of 22 queries slower (total 3.97s vs 3.39s, benches/RESULTS.md).
    // Sensible on-disk defaults for written Parquet: zstd level 1 is fast and compact.
    ("datafusion.execution.parquet.compression", "zstd(1)"),
    // Hive-style partition directories are discovered without declaring them.
    (
        "datafusion.execution.listing_table_factory_infer_partitions",
        "true",
    ),
    // A join's dynamic filter carries its build keys as an `IN` list up to 2,000 distinct keys
    // (150 in DataFusion) instead of a hash-table lookup, so probe-side scans can drop the rows
    // no key matches before they are repartitioned (`engine/src/small_join_filters.rs`): TPC-H
    // Q21's 411 Saudi suppliers, Q19's parts. Same binary, 7 runs: Q21 0.344 -> 0.306 s.
    (
        "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
        "2000",
    ),
];

#[cfg(test)]
mod tests {
    use super::{perfect_hash_join_range, session_config};
    use crate::config::{EngineConfig, MemoryLimit};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn perfect_hash_join_range_follows_the_memory_share() {
        assert_eq!(perfect_hash_join_range(8 * 1024 * MIB, 4), 1 << 20);
        assert_eq!(perfect_hash_join_range(16 * MIB, 4), 65_536);
        assert_eq!(perfect_hash_join_range(MIB, 64), 1024);
        assert_eq!(perfect_hash_join_range(0, 0), 1024);
    }

    #[test]
    fn sessions_use_the_range_unless_the_user_sets_it() {
        let config = EngineConfig {
            memory_limit: Some(MemoryLimit::Bytes(16 * MIB)),
            target_partitions: Some(4),
            ..EngineConfig::default()
        };
        let sc = session_config(&config).unwrap();
        assert_eq!(
            sc.options()
                .execution
                .perfect_hash_join_small_build_threshold,
            65_536
        );
        let mut config = EngineConfig::default();
        config.datafusion.insert(
            "datafusion.execution.perfect_hash_join_small_build_threshold".into(),
            "4096".into(),
        );
        let sc = session_config(&config).unwrap();
        assert_eq!(
            sc.options()
                .execution
                .perfect_hash_join_small_build_threshold,
            4096
        );
    }
}
