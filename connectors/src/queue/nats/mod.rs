//! NATS JetStream streams as tables: `STORED AS NATS`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE events (id BIGINT, kind VARCHAR) STORED AS NATS
//! LOCATION 'nats://127.0.0.1:4222/events.>'
//! OPTIONS ('format' 'json', 'on_error' 'dead_letter', 'dead_letter_path' 'bad/events.jsonl');
//! SELECT * FROM events LIMIT 10;                    -- peek: nothing is consumed
//! CREATE INCREMENTAL VIEW new_events ON events BY _sequence;
//! COPY (SELECT * FROM new_events) TO 'out/events.parquet';   -- each run: only new messages
//! INSERT INTO events VALUES (1, 'signup');          -- publish, awaiting JetStream's acks
//! ```
//!
//! A scan reads the stream holding the subject with an ordered consumer (no acks, nothing is
//! consumed or deleted), from the first message (or past a `_sequence >`/`>=` filter) up to the
//! last message present when the scan started, at most `max_messages`. Progress across runs is
//! the incremental view's watermark on `_sequence`, which the state store advances only after the
//! run's sinks committed: at-least-once (a crash between those two commits repeats a run's
//! messages).
//! Columns `_subject`, `_sequence`, `_timestamp` and `_headers` (JSON) describe each message.

mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

pub(crate) use super::decode::Format;
pub(crate) use super::options::ReadOptions;
use super::options::{
    declared_columns, planner, split_location, take_read_options, take_secret, with_message_columns,
};
use crate::http::{options_of, reject_unknown};

/// Registers `STORED AS NATS`.
pub(crate) fn register(builder: &mut SessionStateBuilder) {
    builder
        .table_factories()
        .get_or_insert_with(Default::default)
        .insert("NATS".into(), Arc::new(NatsFactory));
}

/// Names of the message columns every NATS table has after its declared ones.
pub(crate) const META_COLUMNS: [&str; 4] = ["_subject", "_sequence", "_timestamp", "_headers"];

/// Where a table's messages live and how to reach them.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `nats://host:port` (no credentials).
    pub(crate) server: String,
    pub(crate) subject: String,
    pub(crate) stream: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    /// The table's name, for messages.
    pub(crate) table: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("server", &self.server)
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::External(
            format!("NATS table `{}` ({}): {what}: {e}", self.table, self.server).into(),
        )
    }

    /// A JetStream context on a new connection.
    pub(crate) async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .max_reconnects(Some(5));
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            options = options.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            options = options.token(t.clone());
        }
        let connect = options.connect(self.server.as_str());
        let client = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| self.err("cannot connect", "timed out after 15 s"))?
            .map_err(|e| self.err("cannot connect", e))?;
        Ok(async_nats::jetstream::new(client))
    }

    /// The stream holding the table's subject.
    pub(crate) async fn stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<async_nats::jetstream::stream::Stream> {
        let name = match &self.stream {
            Some(s) => s.clone(),
            None => js.stream_by_subject(self.subject.clone()).await.map_err(|e| {
                self.err(
                    &format!("no JetStream stream holds subject `{}`", self.subject),
                    format!("{e}; create one (nats stream add) or name it with OPTIONS ('stream' '...')"),
                )
            })?,
        };
        js.get_stream(&name)
            .await
            .map_err(|e| self.err(&format!("stream `{name}`"), e))
    }
}

#[derive(Debug)]
struct NatsFactory;

#[async_trait]
impl TableProviderFactory for NatsFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan = planner("NATS", cmd.name.to_string());
        let (host, subject) = split_location(cmd, "nats", "subject", &plan)?;
        let declared = declared_columns(cmd, &META_COLUMNS, &plan)?;
        let mut opts = options_of(cmd);
        let user = take_secret(state, &mut opts, "user", &plan)?;
        let password = take_secret(state, &mut opts, "password", &plan)?;
        let token = take_secret(state, &mut opts, "token", &plan)?;
        let read = take_read_options(state, &mut opts, &declared, None, &plan)?;
        let message_id = opts.remove("message_id");
        if let Some(c) = &message_id
            && declared.index_of(c).is_err()
        {
            return Err(plan(format!("message_id column `{c}` is not declared")));
        }
        let endpoint = Endpoint {
            server: format!("nats://{host}"),
            subject: subject.to_string(),
            stream: opts.remove("stream"),
            user,
            password,
            token,
            table: cmd.name.to_string(),
        };
        reject_unknown(&opts, &plan)?;
        Ok(Arc::new(NatsTable {
            schema: with_metadata(&declared),
            declared,
            endpoint,
            read,
            message_id,
        }))
    }
}

/// The declared columns followed by the message columns.
fn with_metadata(declared: &SchemaRef) -> SchemaRef {
    with_message_columns(
        declared,
        vec![
            Field::new("_subject", DataType::Utf8, true),
            Field::new("_sequence", DataType::UInt64, true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new("_headers", DataType::Utf8, true),
        ],
    )
}

/// A JetStream subject as a table.
#[derive(Debug)]
pub(crate) struct NatsTable {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    message_id: Option<String>,
}

#[async_trait]
impl TableProvider for NatsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // `_sequence` bounds pick where the consumer starts; DataFusion still applies them.
        Ok(filters
            .iter()
            .map(|f| {
                if source::start_sequence(std::slice::from_ref(*f)) > 0 {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition = source::NatsPartition {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            start: source::start_sequence(filters),
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
                "NATS table `{}`: only INSERT INTO (append) is supported; a stream cannot be overwritten",
                self.endpoint.table
            )));
        }
        let sink = sink::NatsSink::new(
            self.endpoint.clone(),
            Arc::clone(&self.schema),
            Arc::clone(&self.declared),
            self.read.format,
            self.message_id.clone(),
        )?;
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}
