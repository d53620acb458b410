//! Databases as sources and sinks: `STORED AS POSTGRES | MYSQL | SQLITE`.
//!
//! The table providers come from `datafusion-table-providers` (connection pools, type mapping,
//! filter/limit/projection pushdown, batched transactional inserts, upserts); FlowEngine adds
//! one option vocabulary for all three, `${secret:NAME}` resolution, pool sharing between the
//! tables of one database, connect timeouts and clear errors that never print a password.
//! `datafusion-federation` is installed in the session so a subquery whose tables all live in
//! one database (joins, aggregates) runs in that database.
//!
//! ```sql
//! CREATE EXTERNAL TABLE orders STORED AS POSTGRES LOCATION 'public.orders'
//! OPTIONS ('connection' 'postgresql://app:${secret:PG_PASS}@db:5432/shop');
//! ```

mod deadline;
mod federation;
#[cfg(feature = "postgres")]
mod last_per_key;
#[cfg(feature = "mysql")]
mod mysql;
mod options;
#[cfg(feature = "postgres")]
mod pg_binary;
#[cfg(feature = "postgres")]
mod pg_copy;
#[cfg(feature = "postgres")]
mod pg_decode;
mod plain;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::CreateExternalTable;
use engine::{Connector, ParamKind, ParamSpec, TableType};

use crate::options::TableOptions;
use crate::resilience::Resilience;

/// PostgreSQL, MySQL/MariaDB and SQLite tables.
#[derive(Debug, Default)]
pub struct DatabaseConnector;

pub(crate) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "connection",
        description: "PostgreSQL/MySQL: URL `postgresql://user:pass@host:port/db` or `mysql://...`; may hold ${secret:NAME}",
        kind: ParamKind::Url,
    },
    ParamSpec {
        name: "host",
        description: "PostgreSQL/MySQL: the server's host, instead of `connection`",
        kind: ParamKind::Host,
    },
    ParamSpec {
        name: "port / user / database",
        description: "PostgreSQL/MySQL: the other connection parts, instead of `connection`",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "password",
        description: "PostgreSQL/MySQL: password; write it as ${secret:NAME}",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "sslmode",
        description: "PostgreSQL: disable, prefer (default), require; MySQL: disabled, preferred (default), required",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "pool_size",
        description: "maximum connections to this database (default 10), shared by its tables",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "connect_timeout",
        description: "seconds to wait for a connection (default 10)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "retries / retry_backoff_ms",
        description: "connecting: transient failures (refused, reset, timeout, too many connections) are retried this often, backoff doubling from this with jitter (defaults 3, 200)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "circuit_failures / circuit_cooldown_secs",
        description: "after this many consecutive failures to one server, calls fail fast for the cooldown, then one probe is let through (defaults 5, 30)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "statement_timeout",
        description: "milliseconds a query may run (default: none); PostgreSQL enforces it in the database, MySQL reads are abandoned by FlowEngine",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "on_conflict",
        description: "sinks: `upsert:col` or `upsert:(a,b)` to update rows with an existing key, `do_nothing:col` to keep them",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "path",
        description: "SQLite: the database file",
        kind: ParamKind::Path,
    },
    ParamSpec {
        name: "sslrootcert",
        description: "PostgreSQL, MySQL: the CA certificate file that verifies the server",
        kind: ParamKind::Path,
    },
    ParamSpec {
        name: "unsupported_types",
        description: "PostgreSQL: a column of a type with no Arrow mapping is read as text (string, the default), or is an error, skipped with a warning (warn) or skipped (ignore)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "busy_timeout_ms",
        description: "SQLite: how long a statement waits for a lock held by another connection (default 5000)",
        kind: ParamKind::Plain,
    },
];

impl Connector for DatabaseConnector {
    fn name(&self) -> &'static str {
        "database"
    }

    fn params(&self) -> Vec<ParamSpec> {
        PARAMS.to_vec()
    }

    fn table_types(&self) -> Vec<TableType> {
        // LOCATION is the table's name in the database; executors open it from its options.
        ["POSTGRES", "MYSQL", "SQLITE"]
            .into_iter()
            .map(|t| TableType::new(t).location_is_a_name().distributable())
            .collect()
    }

    fn register(&self, builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let mut builder = builder;
        // One set of circuit breakers per session, shared by the families (keyed by endpoint).
        let resilience = Arc::new(Resilience::with_stats(engine::RemoteCallStats::of(
            &mut builder,
        )));
        let factories = builder
            .table_factories()
            .get_or_insert_with(Default::default);
        #[cfg(feature = "postgres")]
        factories.insert(
            "POSTGRES".into(),
            Arc::new(DbTableFactory::new(postgres::PostgresBackend::new(
                Arc::clone(&resilience),
            ))),
        );
        #[cfg(feature = "mysql")]
        factories.insert(
            "MYSQL".into(),
            Arc::new(DbTableFactory::new(mysql::MysqlBackend::new(Arc::clone(
                &resilience,
            )))),
        );
        #[cfg(feature = "sqlite")]
        factories.insert(
            "SQLITE".into(),
            Arc::new(DbTableFactory::new(sqlite::SqliteBackend::default())),
        );
        // Federation: the optimizer rule finds maximal subplans over one database and the
        // planner sends them as SQL. Plans without database tables are left as they are.
        Ok(builder
            .with_optimizer_rules(federation::optimizer_rules())
            .with_query_planner(Arc::new(datafusion_federation::FederatedQueryPlanner::new())))
    }
}

/// One database family: reads its options, then opens (and pools) connections and builds a
/// table provider.
#[async_trait]
pub(crate) trait Backend: Debug + Send + Sync + 'static {
    /// What a table's options say, read and checked before anything connects.
    type Settings: Send + Sync;

    /// Display name for messages (`PostgreSQL`).
    fn display_name(&self) -> &'static str;

    /// The table's settings from its options: every option the family understands is taken,
    /// so what is left over is a misspelling.
    fn settings(&self, options: &mut TableOptions<'_>) -> Result<Self::Settings>;

    /// The provider for `table`, readable and (where the backend can) writable. `declared` is
    /// the `CREATE EXTERNAL TABLE` when it lists columns: the table is created if it is missing.
    async fn open(
        &self,
        settings: &Self::Settings,
        table: TableReference,
        declared: Option<&CreateExternalTable>,
    ) -> Result<Arc<dyn TableProvider>>;
}

/// `CREATE EXTERNAL TABLE ... STORED AS <backend>`: options read and checked, then the backend
/// opens.
#[derive(Debug)]
pub(crate) struct DbTableFactory<B> {
    backend: B,
}

impl<B: Backend> DbTableFactory<B> {
    fn new(backend: B) -> Self {
        Self { backend }
    }
}

#[async_trait]
impl<B: Backend> TableProviderFactory for DbTableFactory<B> {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let name = self.backend.display_name();
        let mut options = TableOptions::new(name, state, cmd, PARAMS.to_vec());
        let location = match cmd.locations.as_slice() {
            [] => "",
            [one] => one.trim(),
            _ => return Err(options.error("LOCATION names one database table")),
        };
        let table = if location.is_empty() {
            TableReference::bare(cmd.name.table())
        } else {
            TableReference::parse_str(location)
        };
        let settings = self.backend.settings(&mut options)?;
        options.finish()?;
        let declared = (!cmd.schema.fields().is_empty()).then_some(cmd);
        self.backend
            .open(&settings, table.clone(), declared)
            .await
            .map_err(|e| {
                DataFusionError::Plan(format!(
                    "{name} table `{table}` (for `{}`): {}",
                    cmd.name,
                    strip_external(&e)
                ))
            })
    }
}

/// The message of an error without DataFusion's `External error: ` prefixes.
fn strip_external(e: &DataFusionError) -> String {
    let s = e.to_string();
    let mut rest = s.as_str();
    while let Some(r) = rest.strip_prefix("External error: ") {
        rest = r;
    }
    rest.to_string()
}

/// Map a boxed error from the providers crate into DataFusion's.
pub(crate) fn external(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DataFusionError {
    let e = e.into();
    match server_error(e.as_ref()) {
        Some(detail) => DataFusionError::External(Box::new(ServerError::new(e, detail))),
        None => DataFusionError::External(e),
    }
}

/// `e` with the database server's own message in place of the drivers' `db error`, when its
/// chain of causes holds one (see [`server_error`]); `e` itself otherwise.
pub(crate) fn with_server_error(e: DataFusionError) -> DataFusionError {
    match server_error(&e) {
        Some(detail) if !e.to_string().contains(&detail) => {
            DataFusionError::External(Box::new(ServerError::new(Box::new(e), detail)))
        }
        _ => e,
    }
}

/// What the database server said, from anywhere in `e`'s chain of causes: PostgreSQL's
/// severity, message, SQLSTATE, detail, hint and constraint. The drivers' own `Display` says
/// only `db error`, which is all users saw on connect, insert, upsert and COPY failures.
pub(crate) fn server_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let db = c
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
            .or_else(|| c.downcast_ref::<tokio_postgres::error::DbError>());
        if let Some(db) = db {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; DETAIL: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; HINT: {hint}"));
            }
            if let Some(constraint) = db.constraint() {
                text.push_str(&format!("; constraint {constraint}"));
            }
            return Some(text);
        }
        cause = c.source();
    }
    None
}

/// An error whose message carries the database server's words (see [`server_error`]).
#[derive(Debug)]
struct ServerError {
    message: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl ServerError {
    fn new(source: Box<dyn std::error::Error + Send + Sync>, detail: String) -> Self {
        let outer = source.to_string();
        let message = if outer.contains("db error") {
            outer.replacen("db error", &detail, 1)
        } else {
            format!("{outer}: {detail}")
        };
        Self { message, source }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The provider to register: `writer` behind the federation adaptor of its read side, so the
/// federation optimizer sees the table (and can push whole subqueries down) while `INSERT`
/// still reaches the writer.
pub(crate) fn federated(
    read: &Arc<dyn TableProvider>,
    writer: Arc<dyn TableProvider>,
) -> Arc<dyn TableProvider> {
    use datafusion_federation::FederatedTableProviderAdaptor;
    match (read.as_ref() as &dyn std::any::Any).downcast_ref::<FederatedTableProviderAdaptor>() {
        Some(adaptor) => Arc::new(FederatedTableProviderAdaptor::new_with_provider(
            Arc::clone(&adaptor.source),
            writer,
        )),
        None => writer,
    }
}

/// The key under which a backend shares one pool: every connection parameter (and `extra`
/// settings of the pool). Kept in memory only: it holds the password.
pub(crate) fn pool_key(
    params: &std::collections::HashMap<String, String>,
    extra: impl std::fmt::Debug,
) -> String {
    let mut p: Vec<_> = params.iter().collect();
    p.sort();
    format!("{p:?} {extra:?}")
}

/// Create a table that does not exist yet from the statement's declared columns, with the
/// providers crate's own factory (`options` in its vocabulary). The caller then opens it like
/// any existing table, so created and existing tables are read and written the same way.
/// `missing` is why opening the table failed.
pub(crate) async fn create_declared(
    factory: &dyn TableProviderFactory,
    cmd: &CreateExternalTable,
    table: TableReference,
    options: std::collections::HashMap<String, String>,
    missing: Box<dyn std::error::Error + Send + Sync>,
) -> Result<()> {
    let mut cmd = cmd.clone();
    cmd.name = table;
    cmd.options = options;
    let state = datafusion::prelude::SessionContext::new().state();
    factory.create(&state, &cmd).await.map_err(|create| {
        DataFusionError::Plan(format!(
            "{missing}; creating it from the declared columns failed too: {create}"
        ))
    })?;
    Ok(())
}
