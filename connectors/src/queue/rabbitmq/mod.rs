//! RabbitMQ queues as tables: `STORED AS RABBITMQ`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE orders (id BIGINT, amount DOUBLE) STORED AS RABBITMQ
//! LOCATION 'amqp://127.0.0.1:5672/orders'
//! OPTIONS ('user' 'app', 'password' '${secret:RABBIT_PASSWORD}', 'on_error' 'dead_letter',
//!          'dead_letter_path' 'bad/orders-${batch}.jsonl');
//! COPY (SELECT * FROM orders) TO 'out/orders-${batch}.parquet';  -- consumes, acks after commit
//! SELECT * FROM orders LIMIT 10;         -- peek: the messages go back to the queue
//! INSERT INTO orders (id, amount) VALUES (1, 9.5);  -- publish, awaiting publisher confirms
//! ```
//!
//! A scan consumes the queue with manual acknowledgements, at most `max_messages` (10,000) and
//! no more than the queue held when it started, ending early when nothing arrives for
//! `idle_timeout_ms`. The broker holds at most `prefetch` unacknowledged messages for it (the
//! same bound: memory stays bounded whatever the queue's length). Its messages are acknowledged
//! only after the run that read them committed (see [`engine::acks`]); a failed run, a peek or a
//! crash leaves them in the queue, delivered again (`_redelivered` is then true): at-least-once.
//! Columns `_routing_key`, `_message_id`, `_timestamp`, `_headers` (JSON) and `_redelivered`
//! describe each message.

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

/// Registers `STORED AS RABBITMQ`.
pub(crate) fn register(builder: &mut SessionStateBuilder) {
    builder
        .table_factories()
        .get_or_insert_with(Default::default)
        .insert("RABBITMQ".into(), Arc::new(RabbitFactory));
}

pub(crate) const COLUMNS: MessageColumns = MessageColumns {
    key: "_routing_key",
    id: "_message_id",
    timestamp: "_timestamp",
    headers: "_headers",
    redelivered: "_redelivered",
};

/// Default bound of one scan (and of the messages the broker lets it hold unacknowledged).
const DEFAULT_MAX_MESSAGES: u64 = 10_000;

/// Where a table's queue is and how to reach it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `host:port`.
    host: String,
    vhost: String,
    user: Option<String>,
    password: Option<String>,
    pub(crate) queue: String,
    /// Declare the queue (durable) when missing; otherwise it must exist.
    declare: bool,
    pub(crate) table: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("vhost", &self.vhost)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::External(
            format!(
                "RabbitMQ table `{}` (amqp://{}, queue `{}`): {what}: {e}",
                self.table, self.host, self.queue
            )
            .into(),
        )
    }

    /// `amqp://host:port/queue`, for messages (no credentials).
    pub(crate) fn display(&self) -> String {
        format!("amqp://{}/{}", self.host, self.queue)
    }

    /// A new connection and channel (the queue declared when asked); the number of messages
    /// ready in the queue.
    pub(crate) async fn open(&self) -> Result<(lapin::Connection, lapin::Channel, u32)> {
        let mut uri = lapin::uri::AMQPUri {
            vhost: self.vhost.clone(),
            ..Default::default()
        };
        let (host, port) = match self.host.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| self.err("bad port in LOCATION", p))?,
            ),
            None => (self.host.clone(), 5672),
        };
        uri.authority.host = host;
        uri.authority.port = port;
        if let Some(u) = &self.user {
            uri.authority.userinfo.username = u.clone();
        }
        if let Some(p) = &self.password {
            uri.authority.userinfo.password = p.clone();
        }
        let connect = lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default());
        let connection = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| self.err("cannot connect", "timed out after 15 s"))?
            .map_err(|e| self.err("cannot connect", e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.err("opening a channel", e))?;
        let options = lapin::options::QueueDeclareOptions {
            passive: !self.declare,
            durable: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(
                self.queue.as_str().into(),
                options,
                lapin::types::FieldTable::default(),
            )
            .await
            .map_err(|e| self.err("declaring the queue", e))?;
        Ok((connection, channel, queue.message_count()))
    }
}

#[derive(Debug)]
struct RabbitFactory;

#[async_trait]
impl TableProviderFactory for RabbitFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan = planner("RabbitMQ", cmd.name.to_string());
        let (host, queue) = split_location(cmd, "amqp", "queue", &plan)?;
        if queue.contains('/') {
            return Err(plan(format!(
                "`{queue}` is not a queue name; give the virtual host with OPTIONS ('vhost' '...')"
            )));
        }
        let declared = declared_columns(cmd, &COLUMNS.names(), &plan)?;
        let mut opts = options_of(cmd);
        let user = take_secret(state, &mut opts, "user", &plan)?;
        let password = take_secret(state, &mut opts, "password", &plan)?;
        let read = take_read_options(
            state,
            &mut opts,
            &declared,
            Some(DEFAULT_MAX_MESSAGES),
            &plan,
        )?;
        let max = read.max_messages.unwrap_or(DEFAULT_MAX_MESSAGES);
        let prefetch: u16 = take_parsed(&mut opts, "prefetch", &plan)?
            .unwrap_or_else(|| max.min(u64::from(u16::MAX)) as u16);
        if prefetch == 0 {
            return Err(plan("option `prefetch` must be at least 1".into()));
        }
        let write = Publish {
            exchange: opts.remove("exchange").unwrap_or_default(),
            routing_key: opts
                .remove("routing_key")
                .unwrap_or_else(|| queue.to_string()),
            persistent: take_parsed(&mut opts, "persistent", &plan)?.unwrap_or(true),
            message_id: opts.remove("message_id"),
        };
        if let Some(c) = &write.message_id
            && declared.index_of(c).is_err()
        {
            return Err(plan(format!("message_id column `{c}` is not declared")));
        }
        let endpoint = Endpoint {
            host: host.to_string(),
            vhost: opts.remove("vhost").unwrap_or_else(|| "/".into()),
            user,
            password,
            queue: queue.to_string(),
            declare: take_parsed(&mut opts, "declare", &plan)?.unwrap_or(true),
            table: cmd.name.to_string(),
        };
        reject_unknown(&opts, &plan)?;
        Ok(Arc::new(RabbitTable {
            schema: with_message_columns(&declared, COLUMNS.fields()),
            declared,
            endpoint,
            read,
            prefetch,
            write,
        }))
    }
}

/// How `INSERT` publishes.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) persistent: bool,
    pub(crate) message_id: Option<String>,
}

/// A RabbitMQ queue as a table.
#[derive(Debug)]
pub(crate) struct RabbitTable {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    prefetch: u16,
    write: Publish,
}

#[async_trait]
impl TableProvider for RabbitTable {
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
        let partition = source::RabbitPartition {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            prefetch: self.prefetch,
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
                "RabbitMQ table `{}`: only INSERT INTO (append) is supported",
                self.endpoint.table
            )));
        }
        let sink = sink::RabbitSink::new(
            self.endpoint.clone(),
            Arc::clone(&self.schema),
            Arc::clone(&self.declared),
            self.read.format,
            self.write.clone(),
        )?;
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}
