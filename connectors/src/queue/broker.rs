//! The queue family's one extension point. A [`Broker`] is a broker's protocol only: how its
//! table's options are read, how a bounded read is opened and what it yields, and how rows are
//! published. Everything else every queue table shares is here, once: the `CREATE EXTERNAL
//! TABLE` factory (LOCATION, declared and message columns, credentials, read options, unknown
//! options), the table provider, the scan (decoding, bad messages, batches, the end of a
//! bounded read) and the `INSERT` sink (payloads, message ids, bounded in-flight publishes,
//! what a failure reports).
//!
//! Adding a broker is one module implementing [`Broker`] and one line in [`super::BROKERS`].

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType as DfTableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use engine::{AckLedger, ParamSpec, Secret, TableType};
use futures::StreamExt;

use super::options::{ReadOptions, declared_columns, split_location, take_read_options};
use super::rows::{Message, MessageColumns, Origin, to_rows};
use crate::error::{ConnectorError, ErrorKind};
use crate::options::TableOptions;

/// Publishes awaiting the broker's acknowledgement at most this many at a time (bounded
/// memory, pipelined round trips).
const IN_FLIGHT: usize = 1024;

/// One message broker.
#[async_trait]
pub(crate) trait Broker: Debug + Clone + Send + Sync + Sized + 'static {
    /// The `STORED AS` type and what the runtime must know about it (consuming,
    /// distributable).
    const TABLE_TYPE: TableType;
    /// Its name in messages (`RabbitMQ`).
    const LABEL: &'static str;
    /// `LOCATION` is `SCHEME://host:port/PATH`.
    const SCHEME: &'static str;
    const PATH: &'static str;
    /// The message columns after the declared ones.
    const COLUMNS: MessageColumns;
    /// Messages one scan reads at most unless `max_messages` says otherwise.
    const DEFAULT_MAX_MESSAGES: Option<u64>;
    /// Whether `INSERT` can carry a declared column as each message's id (`message_id`), which
    /// the broker uses to drop a retried statement's duplicates.
    const MESSAGE_IDS: bool = false;
    /// Its own options (the ones every queue table takes are the family's).
    const PARAMS: &'static [ParamSpec];

    /// An open bounded read.
    type Read: MessageRead;
    /// An open publishing connection.
    type Publisher: Publisher;

    /// The broker's part of a table definition: its LOCATION's server and path and its own
    /// options.
    fn define(def: &mut Definition<'_>) -> Result<Self>;

    /// Why `INSERT` cannot publish to this table (a wildcard subject), if it cannot.
    fn cannot_publish(&self) -> Option<String> {
        None
    }

    /// Whether a filter narrows where a read starts (DataFusion still applies it).
    fn narrows_read(&self, _filter: &Expr) -> bool {
        false
    }

    /// Open a bounded read.
    async fn open_read(&self, scan: Scan) -> Result<Self::Read>;

    /// Connect for publishing.
    async fn publisher(&self, format: super::decode::Format) -> Result<Self::Publisher>;

    /// What `EXPLAIN` shows of the sink (`subject=...`).
    fn describe(&self) -> String;
}

/// An open bounded read of one queue table.
#[async_trait]
pub(crate) trait MessageRead: Send + Sized + 'static {
    /// The next messages, at most `max`; none at the end of the read.
    async fn next(&mut self, max: usize) -> Result<Vec<Message>>;

    /// Where the messages come from, for bad-message reports and dead letters.
    fn source(&self) -> String;

    /// The read reached its end (not called after an error or an early drop): a consuming
    /// read hands its acknowledgement to the session's ledger. A read dropped early settles
    /// nothing: its messages come again.
    async fn finish(self) {}
}

/// One message to publish.
pub(crate) struct Outgoing<'a> {
    pub(crate) payload: Vec<u8>,
    /// The value of the `message_id` column, when the table has one.
    pub(crate) id: Option<String>,
    /// The row it came from (the declared columns), for brokers that lay fields out themselves.
    pub(crate) batch: &'a RecordBatch,
    pub(crate) row: usize,
}

/// An open publishing connection.
#[async_trait]
pub(crate) trait Publisher: Send {
    /// Hand one message to the broker.
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()>;
    /// Wait until the broker acknowledged every message sent; how many that was.
    async fn flush(&mut self) -> Result<u64>;
    /// Close the connection (after success or failure).
    async fn close(&mut self) {}
}

/// What a broker's [`Broker::define`] reads.
pub(crate) struct Definition<'a> {
    /// `host[:port]` of LOCATION.
    pub(crate) server: &'a str,
    /// What follows the server in LOCATION (queue, subject, stream, topic).
    pub(crate) path: &'a str,
    /// The broker's own options (and the shared ones not taken yet).
    pub(crate) options: TableOptions<'a>,
    /// `user` and `password`, resolved.
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    /// Errors naming the table and its server.
    pub(crate) site: Site,
}

impl Definition<'_> {
    /// A planning error naming the table.
    pub(crate) fn error(&self, message: impl std::fmt::Display) -> DataFusionError {
        self.options.error(message)
    }

    /// `server` split into host and port (`default_port` when it names none).
    pub(crate) fn host_port(&self, default_port: u16) -> Result<(String, u16)> {
        match self.server.rsplit_once(':') {
            Some((h, p)) => Ok((
                h.to_string(),
                p.parse()
                    .map_err(|_| self.error(format!("bad port `{p}` in LOCATION")))?,
            )),
            None => Ok((self.server.to_string(), default_port)),
        }
    }
}

/// Which table on which server: every runtime error of a queue table names both (and never a
/// credential).
#[derive(Debug, Clone)]
pub(crate) struct Site {
    label: &'static str,
    table: String,
    /// `scheme://host:port/path`.
    url: String,
}

impl Site {
    /// The table's location, for messages and ledgers.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A failure of `what`.
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        self.fail(ErrorKind::Failed, what, e)
    }

    /// The server could not be reached.
    pub(crate) fn unreachable(&self, e: impl std::fmt::Display) -> DataFusionError {
        self.fail(ErrorKind::Unavailable, "cannot connect", e)
    }

    pub(crate) fn fail(
        &self,
        kind: ErrorKind,
        what: &str,
        e: impl std::fmt::Display,
    ) -> DataFusionError {
        ConnectorError::new(
            kind,
            format!(
                "{} table `{}` ({}): {what}: {e}",
                self.label, self.table, self.url
            ),
        )
        .into()
    }
}

/// What one scan asks of [`Broker::open_read`].
pub(crate) struct Scan {
    /// Messages to read at most: a pushed-down `LIMIT` or `max_messages`, the smaller.
    pub(crate) cap: Option<u64>,
    pub(crate) read: ReadOptions,
    pub(crate) filters: Vec<Expr>,
    /// The session's acknowledgement ledger (none in a session that never acknowledges).
    pub(crate) ledger: Option<Arc<AckLedger>>,
}

/// The `STORED AS` registration of broker `B`.
pub(crate) struct Registration<B>(PhantomData<fn() -> B>);

impl<B> Registration<B> {
    pub(crate) const LINE: Self = Self(PhantomData);
}

/// A registered broker, whatever its type.
pub(crate) trait Registered: Sync {
    fn table_type(&self) -> TableType;
    fn params(&self) -> &'static [ParamSpec];
    fn factory(&self) -> Arc<dyn TableProviderFactory>;
}

impl<B: Broker> Registered for Registration<B> {
    fn table_type(&self) -> TableType {
        B::TABLE_TYPE
    }
    fn params(&self) -> &'static [ParamSpec] {
        B::PARAMS
    }
    fn factory(&self) -> Arc<dyn TableProviderFactory> {
        Arc::new(Factory::<B>(PhantomData))
    }
}

struct Factory<B>(PhantomData<fn() -> B>);

impl<B> Debug for Factory<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueTableFactory")
    }
}

#[async_trait]
impl<B: Broker> TableProviderFactory for Factory<B> {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let mut declared_params = super::PARAMS.to_vec();
        declared_params.extend_from_slice(B::PARAMS);
        let mut options = TableOptions::new(B::LABEL, state, cmd, declared_params);
        let (server, path) = split_location(cmd, B::SCHEME, B::PATH, &|m| options.error(m))?;
        let declared = declared_columns(cmd, &B::COLUMNS.names(), &|m| options.error(m))?;
        let message_id = if B::MESSAGE_IDS {
            options.column("message_id", &declared)?
        } else {
            None
        };
        let user = options.secret("user")?.map(|u| u.expose().to_string());
        let password = options.secret("password")?;
        let site = Site {
            label: B::LABEL,
            table: cmd.name.to_string(),
            url: format!("{}://{server}/{path}", B::SCHEME),
        };
        let mut def = Definition {
            server,
            path,
            options,
            user,
            password,
            site,
        };
        let broker = B::define(&mut def)?;
        let read = take_read_options(&mut def.options, &declared, B::DEFAULT_MAX_MESSAGES)?;
        let site = def.site;
        def.options.finish()?;
        Ok(Arc::new(QueueTable {
            schema: super::options::with_message_columns(&declared, B::COLUMNS.fields()),
            declared,
            broker,
            read,
            message_id,
            site,
        }))
    }
}

/// A queue table of broker `B`.
#[derive(Debug)]
struct QueueTable<B> {
    schema: SchemaRef,
    declared: SchemaRef,
    broker: B,
    read: ReadOptions,
    message_id: Option<String>,
    site: Site,
}

#[async_trait]
impl<B: Broker> TableProvider for QueueTable<B> {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> DfTableType {
        DfTableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.broker.narrows_read(f) {
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
        let partition = Partition {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            broker: self.broker.clone(),
            read: self.read.clone(),
            filters: filters.to_vec(),
            limit: limit.map(|l| l as u64),
        };
        super::scan::plan(&self.schema, Arc::new(partition), projection, limit)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let refuse = |why: String| {
            DataFusionError::Plan(format!("{} table `{}`: {why}", B::LABEL, self.site.table))
        };
        if op != InsertOp::Append {
            return Err(refuse(
                "only INSERT INTO (append) is supported; messages cannot be overwritten".into(),
            ));
        }
        if let Some(why) = self.broker.cannot_publish() {
            return Err(refuse(why));
        }
        let message_id = self
            .message_id
            .as_ref()
            .map(|c| self.declared.index_of(c))
            .transpose()?;
        let sink = Sink {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            broker: self.broker.clone(),
            read: self.read.clone(),
            message_id,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// One scan of a queue table: a single partition, read once.
#[derive(Debug)]
struct Partition<B> {
    schema: SchemaRef,
    declared: SchemaRef,
    broker: B,
    read: ReadOptions,
    filters: Vec<Expr>,
    limit: Option<u64>,
}

impl<B: Broker> PartitionStream for Partition<B> {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let scan = Scan {
            cap: super::scan::cap(self.limit, self.read.max_messages),
            read: self.read.clone(),
            filters: self.filters.clone(),
            ledger: ctx.session_config().get_extension::<AckLedger>(),
        };
        let broker = self.broker.clone();
        let open = async move { broker.open_read(scan).await };
        super::scan::batches(
            Arc::clone(&self.schema),
            Arc::clone(&self.declared),
            self.read.clone(),
            B::COLUMNS,
            open,
        )
    }
}

/// `INSERT INTO` a queue table: each row is one message; the statement succeeds only once the
/// broker acknowledged every message.
#[derive(Debug)]
struct Sink<B> {
    schema: SchemaRef,
    declared: SchemaRef,
    broker: B,
    read: ReadOptions,
    message_id: Option<usize>,
}

impl<B: Broker> DisplayAs for Sink<B> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueSink({}, {})", B::LABEL, self.broker.describe())
    }
}

#[async_trait]
impl<B: Broker> DataSink for Sink<B> {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let mut publisher = self.broker.publisher(self.read.format).await?;
        let mut progress = Progress::default();
        let result = self
            .publish_all(&mut publisher, &mut data, &mut progress)
            .await;
        publisher.close().await;
        result.map_err(|e| {
            if progress.sent == 0 {
                return e;
            }
            let hint = if self.message_id.is_some() {
                "; the broker drops the duplicates of messages with the same message_id"
            } else if B::MESSAGE_IDS {
                "; with OPTIONS ('message_id' 'column') the broker drops such duplicates"
            } else {
                ""
            };
            ConnectorError::noted(
                e,
                &format!(
                    "{} earlier messages were acknowledged; a retry publishes them again{hint}",
                    progress.acknowledged
                ),
            )
        })
    }
}

/// How far a statement's publishing got.
#[derive(Debug, Default)]
struct Progress {
    sent: u64,
    acknowledged: u64,
}

impl<B: Broker> Sink<B> {
    async fn publish_all(
        &self,
        publisher: &mut B::Publisher,
        data: &mut SendableRecordBatchStream,
        progress: &mut Progress,
    ) -> Result<u64> {
        // The declared columns: the message columns of an insert are ignored.
        let indices: Vec<usize> = (0..self.declared.fields().len()).collect();
        let mut in_flight = 0;
        while let Some(batch) = data.next().await {
            let batch = batch?.project(&indices)?;
            let payloads = super::encode::payloads(self.read.format, &batch)?;
            for (row, payload) in payloads.into_iter().enumerate() {
                let id = self
                    .message_id
                    .map(|c| array_value_to_string(batch.column(c).as_ref(), row))
                    .transpose()?;
                publisher
                    .send(Outgoing {
                        payload,
                        id,
                        batch: &batch,
                        row,
                    })
                    .await?;
                progress.sent += 1;
                in_flight += 1;
                if in_flight >= IN_FLIGHT {
                    progress.acknowledged += publisher.flush().await?;
                    in_flight = 0;
                }
            }
        }
        progress.acknowledged += publisher.flush().await?;
        Ok(progress.acknowledged)
    }
}

/// Decode a read's messages into the table's rows, batch by batch.
pub(crate) async fn next_rows<R: MessageRead>(
    read: &mut R,
    schema: &SchemaRef,
    declared: &SchemaRef,
    options: &ReadOptions,
    columns: &MessageColumns,
) -> Result<Option<RecordBatch>> {
    loop {
        let messages = read.next(options.batch_size).await?;
        if messages.is_empty() {
            return Ok(None);
        }
        let source = read.source();
        let origin = Origin {
            source: &source,
            schema,
            declared,
            read: options,
            columns,
        };
        let rows = to_rows(&origin, &messages).await?;
        if rows.num_rows() > 0 {
            return Ok(Some(rows));
        }
        // Every message of this batch was bad (and handled): read on.
    }
}
