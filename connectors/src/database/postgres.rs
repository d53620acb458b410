//! `STORED AS POSTGRES`: PostgreSQL tables through `datafusion-table-providers`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraints, TableReference};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use datafusion_table_providers::UnsupportedTypeAction;
use datafusion_table_providers::postgres::{
    DynPostgresConnectionPool, Postgres, PostgresTableProviderFactory, write::PostgresTableWriter,
};
use datafusion_table_providers::sql::db_connection_pool::postgrespool::PostgresConnectionPool;
use datafusion_table_providers::sql::sql_provider_datafusion::SqlTable;
use datafusion_table_providers::util::on_conflict::OnConflict;
use datafusion_table_providers::util::secrets::to_secret_map;
use tokio::sync::Mutex;

use super::options::{self as opt, Conflict, Endpoint};
use super::pg_binary::CopyOutPool;
use super::pg_copy::PgCopyWriter;
use super::plain::PlainRead;
use super::{Backend, create_declared, external, federated, pool_key};
use crate::options::TableOptions;
use crate::resilience::{Resilience, RetryPolicy};

/// Pools shared by every table of one database (same endpoint and settings).
#[derive(Debug)]
pub(crate) struct PostgresBackend {
    pools: Mutex<HashMap<String, Arc<PostgresConnectionPool>>>,
    resilience: Arc<Resilience>,
}

impl PostgresBackend {
    pub(crate) fn new(resilience: Arc<Resilience>) -> Self {
        Self {
            pools: Mutex::default(),
            resilience,
        }
    }
}

/// A PostgreSQL table's options.
pub(crate) struct PgSettings {
    /// The providers crate's connection parameters (they hold the password).
    params: HashMap<String, String>,
    timeout: Duration,
    policy: RetryPolicy,
    on_conflict: Option<Conflict>,
    unsupported: UnsupportedTypeAction,
}

#[async_trait]
impl Backend for PostgresBackend {
    type Settings = PgSettings;

    fn display_name(&self) -> &'static str {
        "PostgreSQL"
    }

    fn settings(&self, options: &mut TableOptions<'_>) -> Result<PgSettings> {
        Ok(PgSettings {
            params: pool_params(options)?,
            timeout: opt::connect_timeout(options)?,
            policy: opt::retry_policy(options)?,
            on_conflict: opt::on_conflict(options)?,
            unsupported: unsupported_types(options)?,
        })
    }

    async fn open(
        &self,
        settings: &PgSettings,
        table: TableReference,
        declared: Option<&CreateExternalTable>,
    ) -> Result<Arc<dyn TableProvider>> {
        let PgSettings {
            params,
            timeout,
            policy,
            on_conflict,
            unsupported,
        } = settings;
        let (timeout, unsupported) = (*timeout, *unsupported);
        let on_conflict: Option<OnConflict> = on_conflict.as_ref().map(|c| c.rule.clone());
        let key = pool_key(params, unsupported);
        let pool = {
            let mut pools = self.pools.lock().await;
            match pools.get(&key) {
                Some(p) => Arc::clone(p),
                None => {
                    let endpoint = format!(
                        "postgresql://{}:{}",
                        params.get("host").map_or("", String::as_str),
                        params.get("port").map_or("", String::as_str)
                    );
                    let pool = self
                        .resilience
                        .call(&endpoint, "connecting to PostgreSQL", policy, || {
                            let secret = to_secret_map(params.clone());
                            let endpoint = endpoint.clone();
                            async move {
                                tokio::time::timeout(timeout, PostgresConnectionPool::new(secret))
                                    .await
                                    .map_err(|_| {
                                        DataFusionError::from(crate::error::ConnectorError::new(
                                            crate::error::ErrorKind::Timeout,
                                            format!("no connection to {endpoint} within {timeout:?} (option connect_timeout)"),
                                        ))
                                    })?
                                    .map_err(external)
                            }
                        })
                        .await?
                        .with_unsupported_type_action(unsupported);
                    let pool = Arc::new(pool);
                    pools.insert(key, Arc::clone(&pool));
                    pool
                }
            }
        };
        match read_provider(&pool, unsupported, table.clone()).await {
            Ok(read) => {
                // Enums are read as dictionaries; the writer only inserts plain values, and a
                // table has one schema for both: present the value type.
                let plain = PlainRead::wrap(Arc::clone(&read));
                let schema = plain.schema();
                let pg = Postgres::new(table.clone(), pool, schema, Constraints::default());
                let writer = PostgresTableWriter::create(plain, pg.clone(), on_conflict.clone());
                let writer = PgCopyWriter::wrap(writer, pg, table, on_conflict.as_ref());
                Ok(federated(&read, writer))
            }
            Err(e) => match declared {
                // The table is missing and the statement says what it holds: create it.
                Some(cmd) if table.schema().is_none() => {
                    let mut params = params.clone();
                    if let Some(c) = &settings.on_conflict {
                        params.insert("on_conflict".into(), c.text.clone());
                    }
                    create_declared(
                        &PostgresTableProviderFactory::new(),
                        cmd,
                        table.clone(),
                        params,
                        e,
                    )
                    .await?;
                    self.open(settings, table, None).await
                }
                _ => Err(external(e)),
            },
        }
    }
}

/// The read side of `table`, as the providers crate's `PostgresTableFactory::table_provider`
/// builds it (an SQL table behind the federation adaptor), but over [`CopyOutPool`], so its
/// queries read by binary COPY.
async fn read_provider(
    pool: &Arc<PostgresConnectionPool>,
    unsupported: UnsupportedTypeAction,
    table: TableReference,
) -> std::result::Result<Arc<dyn TableProvider>, Box<dyn std::error::Error + Send + Sync>> {
    let copy_pool: Arc<DynPostgresConnectionPool> =
        Arc::new(CopyOutPool::new(Arc::clone(pool), unsupported));
    let sql_table = SqlTable::new("postgres", &copy_pool, table)
        .await?
        .with_dialect(Arc::new(PostgreSqlDialect {}));
    Ok(Arc::new(
        Arc::new(sql_table).create_federated_table_provider()?,
    ))
}

/// The providers crate's connection parameters (`host`, `user`, `pass`, `db`, ...).
fn pool_params(options: &mut TableOptions<'_>) -> Result<HashMap<String, String>> {
    let ep = opt::endpoint(options, 5432)?;
    let sslmode = opt::sslmode(options, &ep, None, "prefer")?;
    let Endpoint {
        host,
        port,
        user,
        password,
        database,
        ..
    } = ep;
    let mut out = HashMap::new();
    out.insert("host".into(), host);
    out.insert("port".into(), port.to_string());
    out.insert("user".into(), user.unwrap_or_else(|| "postgres".into()));
    if let Some(p) = password {
        out.insert("pass".into(), p.expose().to_string());
    }
    if let Some(d) = database {
        out.insert("db".into(), d);
    }
    out.insert("sslmode".into(), sslmode);
    if let Some(cert) = options.expanded("sslrootcert")? {
        out.insert("sslrootcert".into(), cert);
    }
    let pool_size = opt::pool_size(options)?;
    out.insert("connection_pool_size".into(), pool_size.to_string());
    let mut session = vec!["-c application_name=flowengine".to_string()];
    if let Some(t) = opt::statement_timeout(options)? {
        session.push(format!("-c statement_timeout={}", t.as_millis()));
    }
    out.insert("options".into(), session.join(" "));
    Ok(out)
}

/// `unsupported_types`: what to do with a column whose database type has no Arrow mapping
/// (jsonb, geometry, ...): `string` (default: read it as text), `error`, `warn` (skip the column
/// with a warning) or `ignore` (skip it).
fn unsupported_types(options: &mut TableOptions<'_>) -> Result<UnsupportedTypeAction> {
    Ok(match options.expanded("unsupported_types")?.as_deref() {
        None | Some("string") => UnsupportedTypeAction::String,
        Some("error") => UnsupportedTypeAction::Error,
        Some("warn") => UnsupportedTypeAction::Warn,
        Some("ignore") => UnsupportedTypeAction::Ignore,
        Some(other) => {
            return Err(options.error(format!(
                "option `unsupported_types` `{other}`: expected string, error, warn or ignore"
            )));
        }
    })
}
