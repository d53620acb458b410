//! Bounded reads of a JetStream subject: an ordered consumer (no acks, nothing consumed) from
//! the start sequence up to the last message present when the scan started.

use std::sync::Arc;

use async_trait::async_trait;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_plan::streaming::PartitionStream;
use engine::bad_records::BadRecord;
use futures::StreamExt;

use super::{Endpoint, ReadOptions};
use crate::queue::decode::decode;
use crate::queue::scan::BoundedRead;

/// The first stream sequence `filters` can match (1 when they do not bound `_sequence`).
pub(crate) fn start_sequence(filters: &[Expr]) -> u64 {
    let mut start = 0u64;
    for f in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else {
            continue;
        };
        let (op, value) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) if c.name == "_sequence" => (*op, v),
            (Expr::Literal(v, _), Expr::Column(c)) if c.name == "_sequence" => match op.swap() {
                Some(o) => (o, v),
                None => continue,
            },
            _ => continue,
        };
        let Some(n) = as_u64(value) else { continue };
        let from = match op {
            Operator::Gt => n.saturating_add(1),
            Operator::GtEq | Operator::Eq => n,
            _ => continue,
        };
        start = start.max(from);
    }
    start
}

fn as_u64(v: &ScalarValue) -> Option<u64> {
    match v
        .cast_to(&datafusion::arrow::datatypes::DataType::UInt64)
        .ok()?
    {
        ScalarValue::UInt64(Some(n)) => Some(n),
        _ => None,
    }
}

/// One scan of a NATS table.
#[derive(Debug)]
pub(crate) struct NatsPartition {
    pub(crate) schema: SchemaRef,
    pub(crate) declared: SchemaRef,
    pub(crate) endpoint: Endpoint,
    pub(crate) read: ReadOptions,
    pub(crate) start: u64,
    pub(crate) limit: Option<u64>,
}

impl PartitionStream for NatsPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = Reader {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            start: self.start,
            cap: crate::queue::scan::cap(self.limit, self.read.max_messages),
            ledger: ctx.session_config().get_extension::<engine::AckLedger>(),
        };
        crate::queue::scan::batches(Arc::clone(&self.schema), reader.open())
    }
}

struct Reader {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    start: u64,
    cap: Option<u64>,
    /// Where the scan reports how far behind the stream it stopped.
    ledger: Option<Arc<engine::AckLedger>>,
}

/// An open read: the consumer's messages, up to `last`.
struct Open {
    reader: Reader,
    messages: Option<async_nats::jetstream::consumer::pull::Ordered>,
    /// The stream's last sequence when the scan started.
    last: u64,
    read_so_far: u64,
    /// Stream sequence of the last message read (the one before the start when none was).
    last_read: u64,
    done: bool,
}

impl Reader {
    async fn open(self) -> Result<Open> {
        let js = self.endpoint.jetstream().await?;
        let mut stream = self.endpoint.stream(&js).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.endpoint.err("reading stream info", e))?;
        let (first, last, count) = (
            info.state.first_sequence,
            info.state.last_sequence,
            info.state.messages,
        );
        let start = self.start.max(first).max(1);
        let empty = count == 0 || start > last || self.cap == Some(0);
        let messages = if empty {
            None
        } else {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: self.endpoint.subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| self.endpoint.err("creating a consumer", e))?;
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|e| self.endpoint.err("reading messages", e))?,
            )
        };
        Ok(Open {
            last_read: start.saturating_sub(1).max(self.start.saturating_sub(1)),
            reader: self,
            messages,
            last,
            read_so_far: 0,
            done: empty,
        })
    }
}

#[async_trait]
impl BoundedRead for Open {
    /// The next batch of decoded rows; `None` at the end of the bounded read.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.done {
                if let Some(ledger) = &self.reader.ledger {
                    let source = format!(
                        "{}/{}",
                        self.reader.endpoint.server, self.reader.endpoint.subject
                    );
                    ledger.note_backlog(&source, self.last.saturating_sub(self.last_read));
                }
                return Ok(None);
            }
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            let r = &self.reader;
            let mut batch: Vec<async_nats::jetstream::Message> = Vec::new();
            while batch.len() < r.read.batch_size {
                if r.cap.is_some_and(|c| self.read_so_far >= c) {
                    self.done = true;
                    break;
                }
                let next = tokio::time::timeout(r.read.idle_timeout, messages.next()).await;
                let message = match next {
                    // Quiet for idle_timeout: the bounded read ends here.
                    Err(_) | Ok(None) => {
                        self.done = true;
                        break;
                    }
                    Ok(Some(m)) => m.map_err(|e| r.endpoint.err("reading messages", e))?,
                };
                let info = message
                    .info()
                    .map(|i| (i.stream_sequence, i.pending))
                    .map_err(|e| r.endpoint.err("reading message metadata", e))?;
                self.read_so_far += 1;
                self.last_read = info.0;
                batch.push(message);
                if info.0 >= self.last || info.1 == 0 {
                    self.done = true;
                    break;
                }
            }
            if batch.is_empty() {
                // Only when the read ended (done): the loop's top reports and ends it.
                self.done = true;
                continue;
            }
            let rows = rows(&self.reader, &batch).await?;
            if rows.num_rows() > 0 || self.done {
                return Ok(Some(rows));
            }
        }
    }
}

/// Decode `messages`; hand undecodable ones to the error policy. (A free function: the open
/// consumer is not `Sync`, so no reference to it may live across an await.)
async fn rows(r: &Reader, messages: &[async_nats::jetstream::Message]) -> Result<RecordBatch> {
    {
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
        let decoded = decode(r.read.format, &r.declared, &payloads)?;
        if !decoded.bad.is_empty() {
            let source: Arc<str> = format!("{}/{}", r.endpoint.server, r.endpoint.subject).into();
            let bad = decoded
                .bad
                .iter()
                .map(|(i, reason)| {
                    let m = &messages[*i];
                    BadRecord {
                        file: Arc::clone(&source),
                        line: None,
                        offset: m.info().map(|i| i.stream_sequence).unwrap_or_default(),
                        raw: String::from_utf8_lossy(&m.payload).into_owned(),
                        reason: format!("message on `{}`: {reason}", m.subject),
                    }
                })
                .collect();
            match &r.read.policy {
                Some(policy) => policy.handle(bad).await?,
                None => {
                    let first = &bad[0];
                    return Err(DataFusionError::Execution(format!(
                        "bad message (stream sequence {}) {}; set OPTIONS ('on_error' 'skip') or ('on_error' 'dead_letter') to continue past bad messages",
                        first.offset, first.reason
                    )));
                }
            }
        }
        let kept: Vec<&async_nats::jetstream::Message> =
            decoded.kept.iter().map(|i| &messages[*i]).collect();
        let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
        columns.extend(metadata(&kept));
        RecordBatch::try_new(Arc::clone(&r.schema), columns)
            .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
    }
}

/// `_subject`, `_sequence`, `_timestamp`, `_headers` of `messages`.
fn metadata(messages: &[&async_nats::jetstream::Message]) -> Vec<ArrayRef> {
    let mut subject = StringBuilder::new();
    let mut sequence = UInt64Builder::with_capacity(messages.len());
    let mut time = TimestampMillisecondBuilder::with_capacity(messages.len()).with_timezone("UTC");
    let mut headers = StringBuilder::new();
    for m in messages {
        subject.append_value(m.subject.as_str());
        match m.info() {
            Ok(i) => {
                sequence.append_value(i.stream_sequence);
                time.append_value((i.published.unix_timestamp_nanos() / 1_000_000) as i64);
            }
            Err(_) => {
                sequence.append_null();
                time.append_null();
            }
        }
        match &m.headers {
            Some(h) if !h.is_empty() => {
                let map: serde_json::Map<String, serde_json::Value> = h
                    .iter()
                    .map(|(k, v)| {
                        let values: Vec<serde_json::Value> =
                            v.iter().map(|x| x.as_str().into()).collect();
                        let value = match values.len() {
                            1 => values.into_iter().next().unwrap_or_default(),
                            _ => values.into(),
                        };
                        (k.to_string(), value)
                    })
                    .collect();
                headers.append_value(serde_json::Value::Object(map).to_string());
            }
            _ => headers.append_null(),
        }
    }
    vec![
        Arc::new(subject.finish()),
        Arc::new(sequence.finish()),
        Arc::new(time.finish()),
        Arc::new(headers.finish()),
    ]
}
