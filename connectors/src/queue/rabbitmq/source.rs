//! Bounded, consuming reads of a RabbitMQ queue. Deliveries are not acknowledged here: a scan
//! that read to its end hands the session's [`AckLedger`] one [`PendingAck`] (its channel and
//! last delivery tag), which acknowledges them all at once when the run commits. A scan dropped
//! early (an error, a `LIMIT` above a filter) closes its connection instead, and the broker
//! delivers its messages again.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::streaming::PartitionStream;
use engine::{AckLedger, PendingAck};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::Endpoint;
use crate::queue::options::ReadOptions;
use crate::queue::rows::{Message, Origin, to_rows};
use crate::queue::scan::BoundedRead;

/// One scan of a RabbitMQ table.
#[derive(Debug)]
pub(crate) struct RabbitPartition {
    pub(crate) schema: SchemaRef,
    pub(crate) declared: SchemaRef,
    pub(crate) endpoint: Endpoint,
    pub(crate) read: ReadOptions,
    pub(crate) prefetch: u16,
    pub(crate) limit: Option<u64>,
}

impl PartitionStream for RabbitPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = Reader {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            prefetch: self.prefetch,
            cap: crate::queue::scan::cap(self.limit, self.read.max_messages).unwrap_or(u64::MAX),
            ledger: ctx.session_config().get_extension::<AckLedger>(),
        };
        crate::queue::scan::batches(Arc::clone(&self.schema), reader.open())
    }
}

struct Reader {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    prefetch: u16,
    cap: u64,
    ledger: Option<Arc<AckLedger>>,
}

/// An open, consuming read.
struct Open {
    reader: Reader,
    connection: lapin::Connection,
    channel: lapin::Channel,
    consumer: Option<lapin::Consumer>,
    /// Messages this scan reads at most: the cap, or what the queue held when it started.
    target: u64,
    read_so_far: u64,
    last_tag: Option<u64>,
    /// This scan's consumer tag.
    tag: String,
    /// Messages ready in the queue when the scan started.
    ready: u64,
}

impl Reader {
    async fn open(self) -> Result<Open> {
        let (connection, channel, ready) = self.endpoint.open().await?;
        let target = self.cap.min(u64::from(ready));
        let tag = format!("flowengine-{}", uuid::Uuid::new_v4().simple());
        let consumer = if target == 0 {
            None
        } else {
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| self.endpoint.err("setting the prefetch", e))?;
            Some(
                channel
                    .basic_consume(
                        self.endpoint.queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| self.endpoint.err("consuming", e))?,
            )
        };
        Ok(Open {
            reader: self,
            connection,
            channel,
            consumer,
            target,
            read_so_far: 0,
            last_tag: None,
            tag,
            ready: u64::from(ready),
        })
    }
}

#[async_trait]
impl BoundedRead for Open {
    /// The next batch of decoded rows; `None` at the end of the bounded read. Dropping the read
    /// early closes its connection: its messages go back.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let r = &self.reader;
            let Some(consumer) = self.consumer.as_mut() else {
                return Ok(None);
            };
            let mut messages = Vec::new();
            let mut done = false;
            while messages.len() < r.read.batch_size {
                if self.read_so_far >= self.target {
                    done = true;
                    break;
                }
                let delivery =
                    match tokio::time::timeout(r.read.idle_timeout, consumer.next()).await {
                        // Quiet for idle_timeout (another consumer took the rest): the
                        // bounded read ends here.
                        Err(_) | Ok(None) => {
                            done = true;
                            break;
                        }
                        Ok(Some(d)) => d.map_err(|e| r.endpoint.err("reading messages", e))?,
                    };
                self.read_so_far += 1;
                self.last_tag = Some(delivery.delivery_tag);
                messages.push(message(delivery));
            }
            if done {
                cancel(&self.channel, &mut self.consumer).await;
            }
            if messages.is_empty() {
                return Ok(None);
            }
            // Delivery tags count per channel: the consumer tag makes each scan's dead letters
            // distinct (they are de-duplicated by source and offset).
            let source = format!("{} (consumer {})", r.endpoint.display(), self.tag);
            let origin = Origin {
                source: &source,
                schema: &r.schema,
                declared: &r.declared,
                read: &r.read,
            };
            let rows = to_rows(&origin, &messages).await?;
            if rows.num_rows() > 0 || done {
                return Ok(Some(rows));
            }
        }
    }

    /// The read ended: leave its acknowledgement to the session's run.
    async fn finish(mut self) {
        cancel(&self.channel, &mut self.consumer).await;
        if let Some(ledger) = &self.reader.ledger {
            ledger.note_backlog(
                &self.reader.endpoint.display(),
                self.ready.saturating_sub(self.read_so_far),
            );
        }
        let (Some(last_tag), Some(ledger)) = (self.last_tag, self.reader.ledger.clone()) else {
            return; // nothing read, or no ledger: dropping closes the connection
        };
        ledger
            .push(Box::new(RabbitAck {
                source: format!("RabbitMQ queue `{}`", self.reader.endpoint.queue),
                messages: self.read_so_far,
                last_tag,
                connection: self.connection,
                channel: self.channel,
            }))
            .await;
    }
}

/// Stop deliveries (those prefetched but not read go back to the queue with the channel).
async fn cancel(channel: &lapin::Channel, consumer: &mut Option<lapin::Consumer>) {
    if let Some(consumer) = consumer.take() {
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
    }
}

fn message(d: lapin::message::Delivery) -> Message {
    let p = &d.properties;
    Message {
        key: d.routing_key.as_str().to_string(),
        id: p.message_id().as_ref().map(|s| s.as_str().to_string()),
        timestamp_ms: p
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .map(|s| s.saturating_mul(1000)),
        headers: p
            .headers()
            .as_ref()
            .filter(|h| !h.inner().is_empty())
            .map(|h| table_json(h).to_string()),
        redelivered: d.redelivered,
        offset: d.delivery_tag,
        payload: d.data,
    }
}

fn table_json(t: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::Float(n) => (*n).into(),
        AMQPValue::Double(n) => (*n).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Void => J::Null,
        other => format!("{other:?}").into(),
    }
}

/// A finished scan's unacknowledged deliveries on their open channel.
struct RabbitAck {
    source: String,
    messages: u64,
    last_tag: u64,
    connection: lapin::Connection,
    channel: lapin::Channel,
}

#[async_trait]
impl PendingAck for RabbitAck {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn messages(&self) -> u64 {
        self.messages
    }

    async fn commit(self: Box<Self>) -> Result<(), String> {
        // Every delivery up to the last this scan read (tags are in delivery order).
        self.channel
            .basic_ack(self.last_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| e.to_string())?;
        // The broker answers the close only after the frames before it: the ack is applied.
        self.channel
            .close(200, "acknowledged".into())
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.connection.close(200, "done".into()).await;
        Ok(())
    }

    async fn release(self: Box<Self>) {
        // Closing without acknowledging requeues every delivery.
        let _ = self.connection.close(200, "released".into()).await;
    }
}
