//! `STORED AS MYSQL`: MySQL and MariaDB tables through `datafusion-table-providers`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraints, TableReference};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;
use datafusion_table_providers::mysql::{
    MySQL, MySQLTableFactory, MySQLTableProviderFactory, write::MySQLTableWriter,
};
use datafusion_table_providers::sql::db_connection_pool::mysqlpool::MySQLConnectionPool;
use datafusion_table_providers::util::secrets::to_secret_map;
use tokio::sync::Mutex;

use super::deadline::with_executor_deadline;
use super::options::{self as opt, Conflict, Endpoint};
use super::plain::PlainRead;
use super::{Backend, create_declared, external, federated, pool_key};
use crate::options::TableOptions;
use crate::resilience::{Resilience, RetryPolicy};

/// Connection parameters of the providers crate.
type Params = HashMap<String, String>;

/// Pools shared by every table of one database (same endpoint and settings).
#[derive(Debug)]
pub(crate) struct MysqlBackend {
    /// Pool and the parameters it connected with (after a TLS fallback), by requested parameters.
    pools: Mutex<HashMap<String, (Arc<MySQLConnectionPool>, Params)>>,
    resilience: Arc<Resilience>,
}

impl MysqlBackend {
    pub(crate) fn new(resilience: Arc<Resilience>) -> Self {
        Self {
            pools: Mutex::default(),
            resilience,
        }
    }
}

/// A MySQL table's options.
pub(crate) struct MySqlSettings {
    /// The providers crate's connection parameters (they hold the password).
    params: Params,
    timeout: Duration,
    policy: RetryPolicy,
    on_conflict: Option<Conflict>,
    statement_timeout: Option<Duration>,
}

#[async_trait]
impl Backend for MysqlBackend {
    type Settings = MySqlSettings;

    fn display_name(&self) -> &'static str {
        "MySQL"
    }

    fn settings(&self, options: &mut TableOptions<'_>) -> Result<MySqlSettings> {
        Ok(MySqlSettings {
            params: pool_params(options)?,
            timeout: opt::connect_timeout(options)?,
            policy: opt::retry_policy(options)?,
            on_conflict: opt::on_conflict(options)?,
            statement_timeout: opt::statement_timeout(options)?,
        })
    }

    async fn open(
        &self,
        settings: &MySqlSettings,
        table: TableReference,
        declared: Option<&CreateExternalTable>,
    ) -> Result<Arc<dyn TableProvider>> {
        let MySqlSettings {
            params,
            timeout,
            policy,
            on_conflict,
            statement_timeout,
        } = settings;
        let (params, timeout, statement_timeout) = (params.clone(), *timeout, *statement_timeout);
        let on_conflict = on_conflict.as_ref().map(|c| c.rule.clone());
        let prefer_tls = params.get("sslmode").is_some_and(|m| m == "preferred");
        let key = pool_key(&params, ());
        let (pool, params) = {
            let mut pools = self.pools.lock().await;
            match pools.get(&key) {
                Some((p, effective)) => (Arc::clone(p), effective.clone()),
                None => {
                    let endpoint = format!(
                        "mysql://{}:{}",
                        params.get("host").map_or("", String::as_str),
                        params.get("tcp_port").map_or("", String::as_str)
                    );
                    let connect = |params: Params| {
                        let endpoint = endpoint.clone();
                        async move {
                            let secret = to_secret_map(params);
                            tokio::time::timeout(timeout, MySQLConnectionPool::new(secret))
                                .await
                                .map_err(|_| {
                                    DataFusionError::from(crate::error::ConnectorError::new(
                                        crate::error::ErrorKind::Timeout,
                                        format!("no connection to {endpoint} within {timeout:?} (option connect_timeout)"),
                                    ))
                                })?
                                .map_err(external)
                        }
                    };
                    let mut effective = params.clone();
                    let first = self
                        .resilience
                        .call(&endpoint, "connecting to MySQL", policy, || {
                            connect(params.clone())
                        })
                        .await;
                    let pool = match first {
                        Ok(pool) => pool,
                        // `preferred` means TLS when the server offers it: mysql_async has no
                        // such mode, so a server without TLS is retried in plain text.
                        Err(e) if prefer_tls && e.to_string().contains("SSL") => {
                            tracing::info!("MySQL server offers no TLS; connecting without it");
                            effective.insert("sslmode".into(), "disabled".into());
                            self.resilience
                                .call(&endpoint, "connecting to MySQL", policy, || {
                                    connect(effective.clone())
                                })
                                .await?
                        }
                        Err(e) => return Err(e),
                    };
                    let pool = Arc::new(pool);
                    pools.insert(key, (Arc::clone(&pool), effective.clone()));
                    (pool, effective)
                }
            }
        };
        let factory = MySQLTableFactory::new(Arc::clone(&pool));
        match factory.table_provider(table.clone()).await {
            Ok(read) => {
                let read = match statement_timeout {
                    Some(t) => with_executor_deadline(read, t, "MySQL"),
                    None => read,
                };
                // Enums are read as dictionaries; the writer only inserts plain values. Sorts
                // stay in DataFusion (see `SortedHere`).
                let plain = PlainRead::wrap_sorting_here(Arc::clone(&read), statement_timeout);
                let schema = plain.schema();
                let my = MySQL::new(table.to_string(), pool, schema, Constraints::default());
                let writer = MySQLTableWriter::create(plain, my, on_conflict);
                Ok(federated(&read, writer))
            }
            Err(e) => match declared {
                // The table is missing and the statement says what it holds: create it.
                Some(cmd) => {
                    let mut params = params;
                    if let Some(c) = &settings.on_conflict {
                        params.insert("on_conflict".into(), c.text.clone());
                    }
                    create_declared(
                        &MySQLTableProviderFactory::new(),
                        cmd,
                        table.clone(),
                        params,
                        e,
                    )
                    .await?;
                    self.open(settings, table, None).await
                }
                None => Err(external(e)),
            },
        }
    }
}

/// The providers crate's connection parameters (`host`, `user`, `pass`, `db`, `tcp_port`).
fn pool_params(options: &mut TableOptions<'_>) -> Result<Params> {
    let ep = opt::endpoint(options, 3306)?;
    let sslmode = opt::sslmode(options, &ep, Some("ssl-mode"), "preferred")?;
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
    out.insert("tcp_port".into(), port.to_string());
    out.insert("user".into(), user.unwrap_or_else(|| "root".into()));
    if let Some(p) = password {
        out.insert("pass".into(), p.expose().to_string());
    }
    if let Some(d) = database {
        out.insert("db".into(), d);
    }
    out.insert("sslmode".into(), sslmode.to_ascii_lowercase());
    if let Some(cert) = options.expanded("sslrootcert")? {
        out.insert("sslrootcert".into(), cert);
    }
    let pool_size = opt::pool_size(options)?;
    out.insert("pool_min".into(), "0".into());
    out.insert("pool_max".into(), pool_size.to_string());
    Ok(out)
}
