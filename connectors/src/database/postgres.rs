//! `STORED AS POSTGRES`: PostgreSQL tables through `datafusion-table-providers`.

use std::collections::HashMap;
use std::sync::Arc;

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

use super::options::{DbOptions, Endpoint};
use super::pg_binary::CopyOutPool;
use super::pg_copy::PgCopyWriter;
use super::plain::PlainRead;
use super::{Backend, create_declared, external, federated, pool_key};
use crate::resilience::Resilience;

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

#[async_trait]
impl Backend for PostgresBackend {
    fn display_name(&self) -> &'static str {
        "PostgreSQL"
    }

    async fn open(
        &self,
        options: &mut DbOptions,
        table: TableReference,
        declared: Option<&CreateExternalTable>,
    ) -> Result<Arc<dyn TableProvider>> {
        let params = pool_params(options)?;
        let timeout = options.connect_timeout()?;
        let policy = options.retry_policy()?;
        let on_conflict = on_conflict(options)?;
        let unsupported = unsupported_types(options)?;
        let key = pool_key(&params, unsupported);
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
                        .call(&endpoint, "connecting to PostgreSQL", &policy, || {
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
                    let mut params = params;
                    if let Some(c) = options.get("on_conflict")? {
                        params.insert("on_conflict".into(), c);
                    }
                    create_declared(
                        &PostgresTableProviderFactory::new(),
                        cmd,
                        table.clone(),
                        params,
                        e,
                    )
                    .await?;
                    self.open(options, table, None).await
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
fn pool_params(options: &mut DbOptions) -> Result<HashMap<String, String>> {
    let Endpoint {
        host,
        port,
        user,
        password,
        database,
        params,
    } = options.endpoint(5432)?;
    let mut out = HashMap::new();
    out.insert("host".into(), host);
    out.insert("port".into(), port.to_string());
    out.insert("user".into(), user.unwrap_or_else(|| "postgres".into()));
    if let Some(p) = password {
        out.insert("pass".into(), p);
    }
    if let Some(d) = database {
        out.insert("db".into(), d);
    }
    let sslmode = match options.get("sslmode")? {
        Some(m) => m,
        None => params
            .get("sslmode")
            .cloned()
            .unwrap_or_else(|| "prefer".into()),
    };
    out.insert("sslmode".into(), sslmode);
    if let Some(cert) = options.get("sslrootcert")? {
        out.insert("sslrootcert".into(), cert);
    }
    let pool_size: u32 = options.number("pool_size", 10)?;
    if pool_size == 0 {
        return Err(DataFusionError::Plan(
            "option `pool_size` must be at least 1".into(),
        ));
    }
    out.insert("connection_pool_size".into(), pool_size.to_string());
    let mut session = vec!["-c application_name=flowengine".to_string()];
    if let Some(ms) = options.get("statement_timeout")? {
        let ms: u64 = ms.trim().parse().map_err(|_| {
            DataFusionError::Plan(format!(
                "option `statement_timeout`: `{ms}` is not a number of milliseconds"
            ))
        })?;
        session.push(format!("-c statement_timeout={ms}"));
    }
    out.insert("options".into(), session.join(" "));
    Ok(out)
}

pub(super) fn on_conflict(options: &mut DbOptions) -> Result<Option<OnConflict>> {
    options
        .get("on_conflict")?
        .map(|s| {
            OnConflict::try_from(s.as_str()).map_err(|e| {
                DataFusionError::Plan(format!(
                    "option `on_conflict` `{s}`: {e} (use upsert:col, upsert:(a,b) or do_nothing:col)"
                ))
            })
        })
        .transpose()
}

/// `unsupported_types`: what to do with a column whose database type has no Arrow mapping
/// (jsonb, geometry, ...): `string` (default: read it as text), `error`, `warn` (skip the column
/// with a warning) or `ignore` (skip it).
pub(super) fn unsupported_types(options: &mut DbOptions) -> Result<UnsupportedTypeAction> {
    Ok(match options.get("unsupported_types")?.as_deref() {
        None | Some("string") => UnsupportedTypeAction::String,
        Some("error") => UnsupportedTypeAction::Error,
        Some("warn") => UnsupportedTypeAction::Warn,
        Some("ignore") => UnsupportedTypeAction::Ignore,
        Some(other) => {
            return Err(DataFusionError::Plan(format!(
                "option `unsupported_types` `{other}`: expected string, error, warn or ignore"
            )));
        }
    })
}
