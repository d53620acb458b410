//! Bounded, consuming reads of a RabbitMQ queue. Deliveries are not acknowledged here: a scan
//! that read to its end hands the session's [`engine::AckLedger`] one [`PendingAck`](engine::PendingAck) (its channel and
//! last delivery tag), which acknowledges them all at once when the run commits. A scan dropped
//! early (an error, a `LIMIT` above a filter) closes its connection instead, and the broker
//! delivers its messages again.

use async_trait::async_trait;
use datafusion::error::Result;
use engine::PendingAck;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::RabbitMq;
use crate::queue::broker::{MessageRead, Scan};
use crate::queue::rows::Message;

/// An open, consuming read.
pub(crate) struct Read {
    rabbit: RabbitMq,
    scan: Scan,
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

impl Read {
    pub(super) async fn open(rabbit: RabbitMq, scan: Scan) -> Result<Self> {
        let (connection, channel, ready) = rabbit.open().await?;
        let cap = scan.cap.unwrap_or(u64::MAX);
        let target = cap.min(u64::from(ready));
        let tag = format!("flowengine-{}", uuid::Uuid::new_v4().simple());
        let prefetch = rabbit
            .prefetch
            .unwrap_or_else(|| cap.min(u64::from(u16::MAX)).max(1) as u16);
        let consumer = if target == 0 {
            None
        } else {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| rabbit.site.err("setting the prefetch", e))?;
            Some(
                channel
                    .basic_consume(
                        rabbit.queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| rabbit.site.err("consuming", e))?,
            )
        };
        Ok(Self {
            rabbit,
            scan,
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
impl MessageRead for Read {
    /// Dropping the read early closes its connection: its messages go back.
    async fn next(&mut self, max: usize) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        let Some(consumer) = self.consumer.as_mut() else {
            return Ok(messages);
        };
        let mut done = false;
        while messages.len() < max {
            if self.read_so_far >= self.target {
                done = true;
                break;
            }
            let delivery =
                match tokio::time::timeout(self.scan.read.idle_timeout, consumer.next()).await {
                    // Quiet for idle_timeout (another consumer took the rest): the bounded
                    // read ends here.
                    Err(_) | Ok(None) => {
                        done = true;
                        break;
                    }
                    Ok(Some(d)) => d.map_err(|e| self.rabbit.site.err("reading messages", e))?,
                };
            self.read_so_far += 1;
            self.last_tag = Some(delivery.delivery_tag);
            messages.push(message(delivery));
        }
        if done {
            cancel(&self.channel, &mut self.consumer).await;
        }
        Ok(messages)
    }

    /// Delivery tags count per channel: the consumer tag makes each scan's dead letters
    /// distinct (they are de-duplicated by source and offset).
    fn source(&self) -> String {
        format!("{} (consumer {})", self.rabbit.site.url(), self.tag)
    }

    /// The read ended: leave its acknowledgement to the session's run.
    async fn finish(mut self) {
        cancel(&self.channel, &mut self.consumer).await;
        if let Some(ledger) = &self.scan.ledger {
            ledger.note_backlog(
                self.rabbit.site.url(),
                self.ready.saturating_sub(self.read_so_far),
            );
        }
        let (Some(last_tag), Some(ledger)) = (self.last_tag, self.scan.ledger.clone()) else {
            return; // nothing read, or no ledger: dropping closes the connection
        };
        ledger
            .push(Box::new(RabbitAck {
                source: format!("RabbitMQ queue `{}`", self.rabbit.queue),
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
