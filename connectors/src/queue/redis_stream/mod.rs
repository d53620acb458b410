//! Redis streams as tables, read through a consumer group: `STORED AS REDIS_STREAM`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE clicks (user_id BIGINT, url VARCHAR) STORED AS REDIS_STREAM
//! LOCATION 'redis://127.0.0.1:6379/clicks'
//! OPTIONS ('group' 'etl', 'format' 'json', 'field' 'data', 'on_error' 'skip');
//! COPY (SELECT * FROM clicks) TO 'out/clicks-${batch}.parquet';  -- XACK after the run commits
//! INSERT INTO clicks (user_id, url) VALUES (7, '/home');          -- XADD
//! ```
//!
//! A scan reads as consumer `consumer` (default `flowengine`) of group `group` (default
//! `flowengine`, created at the stream's start, `start` '0', when missing): first the entries
//! this consumer was given earlier and never acknowledged (a failed run, a peek, a crash; they
//! show `_redelivered` true), then new ones, at most `max_messages` (10,000), ending when none is
//! left. Entries are acknowledged (`XACK`) only after the run that read them committed (see
//! [`engine::acks`]): at-least-once. The payload is the entry's `field` (default `data`) in
//! `format` json, csv or raw; format `fields` maps each declared column to the entry field of
//! the same name instead. Columns `_stream`, `_id`, `_timestamp` (the id's time), `_fields` (the
//! entry's other fields, JSON) and `_redelivered` describe each entry.

mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_plan::ExecutionPlan;

use super::options::{
    ReadOptions, declared_columns, planner, split_location, take_parsed, take_read_options,
    take_secret, with_message_columns,
};
use super::rows::MessageColumns;
use crate::http::{options_of, reject_unknown};

/// Registers `STORED AS REDIS_STREAM`.
pub(crate) fn register(builder: &mut SessionStateBuilder) {
    builder
        .table_factories()
        .get_or_insert_with(Default::default)
        .insert("REDIS_STREAM".into(), Arc::new(RedisStreamFactory));
}

pub(crate) const COLUMNS: MessageColumns = MessageColumns {
    key: "_stream",
    id: "_id",
    timestamp: "_timestamp",
    headers: "_fields",
    redelivered: "_redelivered",
};

const DEFAULT_MAX_MESSAGES: u64 = 10_000;

/// Where a table's stream is and how to reach it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    db: i64,
    user: Option<String>,
    password: Option<String>,
    pub(crate) key: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    /// Where a new group starts: `0` (the whole stream) or `$` (only new entries).
    start: String,
    /// The entry field holding the payload; `None` with format `fields`.
    pub(crate) field: Option<String>,
    pub(crate) table: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("key", &self.key)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::External(
            format!(
                "Redis stream table `{}` (redis://{}:{}, stream `{}`): {what}: {e}",
                self.table, self.host, self.port, self.key
            )
            .into(),
        )
    }

    pub(crate) fn display(&self) -> String {
        format!("redis://{}:{}/{}", self.host, self.port, self.key)
    }

    pub(crate) async fn connect(&self) -> Result<redis::aio::MultiplexedConnection> {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(u) = &self.user {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        let info = redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .map_err(|e| self.err("bad address", e))?
            .set_redis_settings(settings.set_db(self.db));
        let client = redis::Client::open(info).map_err(|e| self.err("bad address", e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(15)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err("cannot connect", e))
    }

    /// Create the consumer group (and the stream) unless it exists.
    pub(crate) async fn ensure_group(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.start)
            .arg("MKSTREAM")
            .query_async(con)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.err(&format!("creating consumer group `{}`", self.group), e)),
        }
    }
}

use redis::IntoConnectionInfo;

#[derive(Debug)]
struct RedisStreamFactory;

#[async_trait]
impl TableProviderFactory for RedisStreamFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan = planner("Redis stream", cmd.name.to_string());
        let (host, key) = split_location(cmd, "redis", "stream", &plan)?;
        let (host, port) = match host.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| plan(format!("bad port `{p}` in LOCATION")))?,
            ),
            None => (host, 6379),
        };
        let declared = declared_columns(cmd, &COLUMNS.names(), &plan)?;
        let mut opts = options_of(cmd);
        let fields = opts
            .get("format")
            .is_some_and(|f| f.eq_ignore_ascii_case("fields"));
        if fields {
            // Each declared column is an entry field: decoded as a JSON object of strings.
            opts.insert("format".into(), "json".into());
        }
        let user = take_secret(state, &mut opts, "user", &plan)?;
        let password = take_secret(state, &mut opts, "password", &plan)?;
        let read = take_read_options(
            state,
            &mut opts,
            &declared,
            Some(DEFAULT_MAX_MESSAGES),
            &plan,
        )?;
        let field = opts.remove("field").unwrap_or_else(|| "data".into());
        let start = opts.remove("start").unwrap_or_else(|| "0".into());
        if start != "0" && start != "$" {
            return Err(plan(format!(
                "option `start` = `{start}`: expected '0' (the whole stream) or '$' (new entries)"
            )));
        }
        let endpoint = Endpoint {
            host: host.to_string(),
            port,
            db: take_parsed(&mut opts, "db", &plan)?.unwrap_or(0),
            user,
            password,
            key: key.to_string(),
            group: opts.remove("group").unwrap_or_else(|| "flowengine".into()),
            consumer: opts
                .remove("consumer")
                .unwrap_or_else(|| "flowengine".into()),
            start,
            field: (!fields).then_some(field),
            table: cmd.name.to_string(),
        };
        let maxlen: Option<usize> = take_parsed(&mut opts, "maxlen", &plan)?;
        reject_unknown(&opts, &plan)?;
        Ok(Arc::new(RedisStreamTable {
            schema: with_message_columns(&declared, COLUMNS.fields()),
            declared,
            endpoint,
            read,
            maxlen,
        }))
    }
}

/// A Redis stream as a table.
#[derive(Debug)]
pub(crate) struct RedisStreamTable {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    maxlen: Option<usize>,
}

#[async_trait]
impl TableProvider for RedisStreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition = source::StreamPartition {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            limit: limit.map(|l| l as u64),
        };
        crate::queue::scan::plan(&self.schema, Arc::new(partition), projection, limit)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op != InsertOp::Append {
            return Err(DataFusionError::Plan(format!(
                "Redis stream table `{}`: only INSERT INTO (append) is supported",
                self.endpoint.table
            )));
        }
        let sink = sink::StreamSink::new(
            self.endpoint.clone(),
            Arc::clone(&self.schema),
            Arc::clone(&self.declared),
            self.read.format,
            self.maxlen,
        );
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}
