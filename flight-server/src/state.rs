//! Server-wide state: the engine, admission control, tickets held for clients, running queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use engine::pipeline::Prepared;
use engine::security::{AuditLog, AuditRecord, Policy};
use engine::{Engine, ServerConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::auth::Authenticator;
use crate::exec::QueryOutput;
use crate::metrics::Metrics;

/// Everything the Flight service and the admin endpoint share.
pub(crate) struct ServerState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: ServerConfig,
    /// Random id of this server process; tickets from another instance are refused.
    pub(crate) instance: String,
    pub(crate) admission: Admission,
    pub(crate) tickets: Tickets,
    pub(crate) running: Running,
    pub(crate) metrics: Metrics,
    pub(crate) sql_info: SqlInfoData,
    pub(crate) xdbc_info: XdbcTypeInfoData,
    pub(crate) ready: AtomicBool,
    /// Cancelled when the shutdown grace period is over: every running query stops.
    pub(crate) shutdown: CancellationToken,
    pub(crate) auth: Authenticator,
    /// The access policy in force; a configuration reload replaces it.
    policy: std::sync::RwLock<Arc<Policy>>,
    /// Files no client may read (config, secrets, state); kept to rebuild the policy.
    pub(crate) protected: Vec<std::path::PathBuf>,
    /// The configuration in force: the start-up one with reloaded settings applied.
    live: std::sync::RwLock<Arc<engine::EngineConfig>>,
    pub(crate) audit: AuditLog,
    /// Each tenant's session (its catalog as default, its memory quota) and query slots.
    pub(crate) tenants: HashMap<String, TenantRuntime>,
    /// Recent statements and connections (`system.queries`, `system.sessions`).
    pub(crate) activity: crate::activity::Activity,
    /// Each client session's own `SET`s.
    pub(crate) sessions: Sessions,
}

/// The settings each client session changed with `SET`, applied to its statements only.
/// Sessions idle longer than the token lifetime are forgotten.
pub(crate) struct Sessions {
    idle: Duration,
    /// Session key -> its settings and when it was last used.
    map: Mutex<HashMap<String, SessionSettings>>,
}

type SessionSettings = (Vec<(String, String)>, Instant);

impl Sessions {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The settings of session `key`, in the order they were set.
    pub(crate) fn settings(&self, key: &str) -> Vec<(String, String)> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match map.get_mut(key) {
            Some((settings, seen)) if now.duration_since(*seen) < self.idle => {
                *seen = now;
                settings.clone()
            }
            _ => Vec::new(),
        }
    }

    /// Set (`Some`) or reset (`None`) `name` for session `key`.
    pub(crate) fn apply(&self, key: &str, name: &str, value: Option<&str>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Idle sessions are dropped when a session sets something, not on every statement.
        let now = Instant::now();
        map.retain(|_, (_, seen)| now.duration_since(*seen) < self.idle);
        let (settings, seen) = map
            .entry(key.to_string())
            .or_insert_with(|| (Vec::new(), Instant::now()));
        *seen = Instant::now();
        settings.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            settings.push((name.to_string(), value.to_string()));
        }
    }
}

/// A tenant's view of the engine and its concurrency quota.
pub(crate) struct TenantRuntime {
    pub(crate) engine: Arc<Engine>,
    slots: Option<(Arc<Semaphore>, usize)>,
}

impl TenantRuntime {
    pub(crate) fn new(engine: Engine, max_concurrent: Option<usize>) -> Self {
        Self {
            engine: Arc::new(engine),
            slots: max_concurrent.map(|n| (Arc::new(Semaphore::new(n)), n)),
        }
    }

    /// A slot in the tenant's concurrency quota (none when it has no quota), waiting at most
    /// `wait`; refused with `RESOURCE_EXHAUSTED` when none frees up in time.
    async fn admit(
        &self,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<Option<OwnedSemaphorePermit>, Status> {
        let Some((slots, max)) = &self.slots else {
            return Ok(None);
        };
        let acquire = Arc::clone(slots).acquire_owned();
        let result = match wait {
            Some(w) => tokio::time::timeout(w, acquire).await.ok(),
            None => Some(acquire.await),
        };
        match result {
            Some(Ok(permit)) => Ok(Some(permit)),
            Some(Err(_)) => Err(Status::unavailable("server is shutting down")),
            None => Err(Status::resource_exhausted(format!(
                "tenant `{name}` is at its limit of {max} concurrent queries \
                 (security.tenants.max_concurrent_queries); retry later"
            ))),
        }
    }
}

impl ServerState {
    pub(crate) fn new(
        engine: Arc<Engine>,
        config: ServerConfig,
        policy: Policy,
        protected: Vec<std::path::PathBuf>,
        audit: AuditLog,
        tenants: HashMap<String, TenantRuntime>,
    ) -> Self {
        let metrics = Metrics::new();
        metrics
            .memory_limit
            .set(engine.config().memory_limit_bytes());
        Self {
            admission: Admission::new(config.max_concurrent_queries, config.max_queued_queries),
            tickets: Tickets::new(Duration::from_secs(config.ticket_ttl_secs)),
            running: Running::default(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            sql_info: crate::sql_info::sql_info(),
            xdbc_info: crate::sql_info::xdbc_type_info(),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            auth: Authenticator::new(&engine.config().security, audit.clone()),
            policy: std::sync::RwLock::new(Arc::new(policy)),
            protected,
            live: std::sync::RwLock::new(Arc::new(engine.config().clone())),
            audit,
            tenants,
            activity: crate::activity::Activity::default(),
            sessions: Sessions::new(Duration::from_secs(
                engine.config().security.token_ttl_secs.max(60),
            )),
            metrics,
            engine,
            config,
        }
    }

    /// The engine statements of `tenant` (none: the server's own) plan and run in.
    pub(crate) fn engine_for(&self, tenant: Option<&str>) -> &Arc<Engine> {
        tenant
            .and_then(|t| self.tenants.get(t))
            .map_or(&self.engine, |t| &t.engine)
    }

    /// The engine `who`'s statements plan and run in: their tenant's, seen through their
    /// session's own settings.
    pub(crate) fn session_engine(&self, who: &crate::auth::Caller) -> Result<Arc<Engine>, Status> {
        let tenant = who.principal.tenant.as_ref().map(|t| t.tenant.as_str());
        let policy = self.policy();
        let gate = engine::security::gate::CallerGate::new(
            policy.gate().clone(),
            who.principal.is_admin(),
        );
        let engine = self.engine_for(tenant);
        let visible: Option<engine::security::visible::Visibility> = (!who.principal.is_admin())
            .then(|| {
                let state = engine.context().state();
                let options = state.config().options();
                let (catalog, schema) = (
                    options.catalog.default_catalog.clone(),
                    options.catalog.default_schema.clone(),
                );
                let principal = who.principal.clone();
                Arc::new(move |c: &str, s: &str, t: Option<&str>| match t {
                    None => principal.home_catalog().is_none_or(|home| home == c),
                    Some(t) => policy.may_see(
                        &principal,
                        &datafusion::common::ResolvedTableReference {
                            catalog: c.into(),
                            schema: s.into(),
                            table: t.into(),
                        },
                        &catalog,
                        &schema,
                    ),
                }) as engine::security::visible::Visibility
            });
        let scope = engine::SessionScope {
            settings: self.sessions.settings(&who.session),
            gate: Some(Arc::new(gate)),
            visible,
            origin: Some(format!("flight-sql:{}", who.principal.name)),
        };
        engine
            .for_session(&scope)
            .map(Arc::new)
            .map_err(|e| Status::invalid_argument(format!("session settings: {e}")))
    }

    /// A slot in `tenant`'s concurrency quota, waiting at most `wait`.
    pub(crate) async fn admit_tenant(
        &self,
        tenant: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<Option<OwnedSemaphorePermit>, Status> {
        match tenant.and_then(|t| Some((t, self.tenants.get(t)?))) {
            Some((name, rt)) => rt.admit(name, wait).await,
            None => Ok(None),
        }
    }

    /// The metrics exposition with the gauges read at call time brought up to date.
    pub(crate) fn metrics_text(&self) -> String {
        let pool = &self.engine.context().runtime_env().memory_pool;
        self.metrics.memory_reserved.set(pool.reserved() as u64);
        self.metrics
            .sync_connectors(&self.engine.remote_call_stats());
        self.metrics.encode()
    }

    pub(crate) fn query_timeout(&self) -> Option<Duration> {
        let secs = self.live().server.query_timeout_secs;
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// The access policy in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The configuration in force (reloaded settings applied).
    pub(crate) fn live(&self) -> Arc<engine::EngineConfig> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Put a reloaded configuration and policy in force.
    pub(crate) fn set_live(&self, config: engine::EngineConfig, policy: Option<Policy>) {
        if let Some(policy) = policy {
            *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// At most `max_concurrent` queries execute; up to `max_queued` wait; the rest are refused.
pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    max_concurrent: usize,
    max_queued: usize,
}

impl Admission {
    fn new(max_concurrent: usize, max_queued: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            queued: AtomicUsize::new(0),
            max_concurrent,
            max_queued,
        }
    }

    /// Wait for an execution slot, at most `wait`.
    pub(crate) async fn admit(
        &self,
        metrics: &Metrics,
        wait: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        // Reserve a queue place atomically, or refuse.
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued).then_some(q + 1)
            });
        if reserved.is_err() {
            return Err(Status::resource_exhausted(format!(
                "server busy: {} queries running and {} waiting; retry later",
                self.max_concurrent, self.max_queued
            )));
        }
        metrics.queued.inc();
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let result = match wait {
            Some(w) => tokio::time::timeout(w, acquire).await.ok(),
            None => Some(acquire.await),
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        metrics.queued.dec();
        match result {
            Some(Ok(permit)) => Ok(permit),
            Some(Err(_)) => Err(Status::unavailable("server is shutting down")),
            None => Err(Status::resource_exhausted(
                "waited for an execution slot until the query timeout; retry later",
            )),
        }
    }

    pub(crate) fn close(&self) {
        self.slots.close();
    }
}

/// A planned statement a ticket refers to.
pub(crate) struct TicketEntry {
    pub(crate) sql: String,
    /// One plan per parameter row (one plan when there are no parameters).
    pub(crate) plans: Vec<Prepared>,
    pub(crate) schema: SchemaRef,
    pub(crate) expires: Instant,
    /// Set when the query was started early by `PollFlightInfo`.
    pub(crate) started: Option<QueryOutput>,
    /// Set for statements with side effects (DDL, DML), which run when they are submitted: a
    /// client that never fetches the result (ADBC's DB-API does not for DDL) still gets them.
    pub(crate) results: Option<Vec<arrow::array::RecordBatch>>,
    /// Who planned it: only they may redeem the ticket.
    pub(crate) owner: String,
    /// The session view it was planned in, and runs in.
    pub(crate) engine: Arc<Engine>,
    /// The audit record completed when the statement ends.
    pub(crate) audit: AuditRecord,
}

/// Tickets handed out by `GetFlightInfo`/`PollFlightInfo`, redeemed once by `DoGet`.
pub(crate) struct Tickets {
    ttl: Duration,
    map: Mutex<HashMap<String, TicketEntry>>,
}

impl Tickets {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TicketEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removals), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a query; returns its id. Expired entries are dropped (which cancels any query a
    /// poll started for them).
    pub(crate) fn insert(&self, mut entry: TicketEntry) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        entry.expires = Instant::now() + self.ttl;
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
        map.insert(id.clone(), entry);
        id
    }

    /// Store a query under a chosen id (a query a poll already started keeps its id).
    pub(crate) fn insert_with_id(&self, id: String, mut entry: TicketEntry) {
        entry.expires = Instant::now() + self.ttl;
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
        map.insert(id, entry);
    }

    /// Take a query out (tickets are single-use).
    pub(crate) fn take(&self, id: &str) -> Option<TicketEntry> {
        let entry = self.lock().remove(id)?;
        (entry.expires > Instant::now()).then_some(entry)
    }

    /// Look at a polled query's progress without taking it.
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&mut TicketEntry) -> R) -> Option<R> {
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if entry.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        Some(f(entry))
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }
}

/// Cancellation handles of executing queries, by query id.
#[derive(Default)]
pub(crate) struct Running {
    /// Query id -> (cancellation token, user who runs it).
    map: Mutex<HashMap<String, (CancellationToken, String)>>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (CancellationToken, String)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, id: &str, token: CancellationToken, owner: &str) {
        self.lock()
            .insert(id.to_string(), (token, owner.to_string()));
    }

    pub(crate) fn unregister(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Cancel one query if `may(owner)`; false when it is not running or not theirs.
    pub(crate) fn cancel(&self, id: &str, may: impl Fn(&str) -> bool) -> bool {
        match self.lock().get(id) {
            Some((token, owner)) if may(owner) => {
                token.cancel();
                true
            }
            _ => false,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_at_its_concurrency_quota_waits_then_is_refused() {
        let engine = Engine::try_new(
            &engine::EngineConfig::default(),
            &engine::ConnectorRegistry::default(),
        )
        .unwrap();
        let rt = TenantRuntime::new(engine, Some(1));
        let wait = Some(Duration::from_millis(50));
        let first = rt.admit("acme", wait).await.unwrap();
        assert!(first.is_some());
        let refused = rt.admit("acme", wait).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("tenant `acme`"),
            "{}",
            refused.message()
        );
        drop(first);
        assert!(rt.admit("acme", wait).await.unwrap().is_some());
        // No quota: never waits.
        let free = TenantRuntime::new(Arc::unwrap_or_clone(Arc::clone(&rt.engine)), None);
        assert!(free.admit("x", wait).await.unwrap().is_none());
    }
}
