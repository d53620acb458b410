//! Bounded, consuming reads of a Redis stream through a consumer group: this consumer's
//! unacknowledged entries first, then new ones, until none is left or `max_messages`. A scan
//! that read to its end hands the session's [`AckLedger`] the entry ids, acknowledged (`XACK`)
//! when the run commits; otherwise they stay pending and the next scan reads them again.
//! In a session that never acknowledges (a peek), the scan reads with `XRANGE` past the group's
//! last delivered entry instead, so it changes nothing.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::streaming::PartitionStream;
use engine::{AckLedger, PendingAck};
use redis::Value;
use redis::streams::{StreamId, StreamReadReply};

use super::Endpoint;
use crate::queue::options::ReadOptions;
use crate::queue::rows::{Message, Origin, to_rows};
use crate::queue::scan::BoundedRead;

/// Entry ids per `XACK`.
const ACK_CHUNK: usize = 1000;

/// One scan of a Redis stream table.
#[derive(Debug)]
pub(crate) struct StreamPartition {
    pub(crate) schema: SchemaRef,
    pub(crate) declared: SchemaRef,
    pub(crate) endpoint: Endpoint,
    pub(crate) read: ReadOptions,
    pub(crate) limit: Option<u64>,
}

impl PartitionStream for StreamPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = Reader {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
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
    cap: u64,
    ledger: Option<Arc<AckLedger>>,
}

struct Open {
    reader: Reader,
    con: redis::aio::MultiplexedConnection,
    /// Where the next read starts: an id within this consumer's pending entries, or `>` for
    /// new entries.
    cursor: String,
    ids: Vec<String>,
    done: bool,
    /// A session that never acknowledges (`flowengine sql`, the Flight SQL server): read with
    /// `XRANGE` past the group's last delivered entry, changing nothing in the group.
    peek: bool,
}

impl Reader {
    async fn open(self) -> Result<Open> {
        let mut con = self.endpoint.connect().await?;
        let peek = !self.ledger.as_ref().is_some_and(|l| l.is_enabled());
        let cursor = if peek {
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.endpoint.key)
                    .query_async(&mut con)
                    .await;
            let delivered = groups.ok().and_then(|g| {
                g.groups
                    .into_iter()
                    .find(|g| g.name == self.endpoint.group)
                    .map(|g| g.last_delivered_id)
            });
            match delivered {
                Some(id) => id,
                // No group yet: what it would start with.
                None if self.endpoint.start == "$" => "+".into(),
                None => "0-0".into(),
            }
        } else {
            self.endpoint.ensure_group(&mut con).await?;
            "0".into()
        };
        Ok(Open {
            done: self.cap == 0 || cursor == "+",
            reader: self,
            con,
            cursor,
            ids: Vec::new(),
            peek,
        })
    }
}

#[async_trait]
impl BoundedRead for Open {
    /// The next batch of decoded rows; `None` at the end of the bounded read. Dropping the read
    /// early leaves the entries it read pending: the next scan reads them again.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let r = &self.reader;
            let room = r.cap - self.ids.len() as u64;
            let count = (r.read.batch_size as u64).min(room).max(1);
            let (entries, redelivered) = if self.peek {
                let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&r.endpoint.key)
                    .arg(format!("({}", self.cursor))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut self.con)
                    .await
                    .map_err(|e| r.endpoint.err("reading entries", e))?;
                if let Some(last) = range.ids.last() {
                    self.cursor = last.id.clone();
                }
                (range.ids, false)
            } else {
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&r.endpoint.group)
                    .arg(&r.endpoint.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&r.endpoint.key)
                    .arg(&self.cursor)
                    .query_async(&mut self.con)
                    .await
                    .map_err(|e| r.endpoint.err("reading entries", e))?;
                let entries: Vec<StreamId> = reply
                    .and_then(|r| r.keys.into_iter().next())
                    .map(|k| k.ids)
                    .unwrap_or_default();
                let pending = self.cursor != ">";
                if pending {
                    match entries.last() {
                        Some(last) => self.cursor = last.id.clone(),
                        // Every pending entry was read again: now the new ones.
                        None => {
                            self.cursor = ">".into();
                            continue;
                        }
                    }
                }
                (entries, pending)
            };
            if entries.is_empty() {
                self.done = true;
                return Ok(None);
            }
            let messages: Vec<Message> = entries
                .iter()
                .map(|e| message(&r.endpoint, e, redelivered))
                .collect();
            self.ids.extend(entries.into_iter().map(|e| e.id));
            if self.ids.len() as u64 >= r.cap {
                self.done = true;
            }
            let source = r.endpoint.display();
            let origin = Origin {
                source: &source,
                schema: &r.schema,
                declared: &r.declared,
                read: &r.read,
            };
            let rows = to_rows(&origin, &messages).await?;
            if rows.num_rows() > 0 || self.done {
                return Ok(Some(rows));
            }
        }
    }

    async fn finish(mut self) {
        let Some(ledger) = self.reader.ledger.clone() else {
            return;
        };
        if self.peek {
            return;
        }
        // The group's lag: entries not yet delivered to it (Redis 7+; unknown before).
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.reader.endpoint.key)
            .query_async(&mut self.con)
            .await;
        if let Some(lag) = groups.ok().and_then(|g| {
            g.groups
                .into_iter()
                .find(|g| g.name == self.reader.endpoint.group)
                .and_then(|g| g.lag)
        }) {
            ledger.note_backlog(&self.reader.endpoint.display(), lag as u64);
        }
        if self.ids.is_empty() {
            return;
        }
        ledger
            .push(Box::new(StreamAck {
                source: format!(
                    "Redis stream `{}` (group `{}`)",
                    self.reader.endpoint.key, self.reader.endpoint.group
                ),
                endpoint: self.reader.endpoint,
                con: self.con,
                ids: self.ids,
            }))
            .await;
    }
}

/// An entry as a message: the payload field (or, with format `fields`, every field as a JSON
/// object) and the other fields as `_fields`.
fn message(endpoint: &Endpoint, e: &StreamId, redelivered: bool) -> Message {
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Double(d) => Some(d.to_string()),
            _ => None,
        }
    };
    let (payload, others) = match &endpoint.field {
        Some(field) => {
            let payload = match e.map.get(field) {
                Some(Value::BulkString(b)) => b.clone(),
                Some(v) => text(v).unwrap_or_default().into_bytes(),
                None => Vec::new(),
            };
            let others: serde_json::Map<String, serde_json::Value> = e
                .map
                .iter()
                .filter(|(k, _)| *k != field)
                .map(|(k, v)| {
                    (
                        k.clone(),
                        text(v).map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            (payload, others)
        }
        None => {
            let all: serde_json::Map<String, serde_json::Value> = e
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        text(v).map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            (
                serde_json::Value::Object(all).to_string().into_bytes(),
                serde_json::Map::new(),
            )
        }
    };
    let (millis, seq) = match e.id.split_once('-') {
        Some((ms, seq)) => (
            ms.parse::<i64>().ok(),
            seq.parse::<u64>().unwrap_or_default(),
        ),
        None => (None, 0),
    };
    Message {
        payload,
        key: endpoint.key.clone(),
        id: Some(e.id.clone()),
        timestamp_ms: millis,
        headers: (!others.is_empty()).then(|| serde_json::Value::Object(others).to_string()),
        redelivered,
        // Unique per entry (dead letters are de-duplicated by offset): milliseconds and the
        // sequence within the millisecond.
        offset: (millis.unwrap_or_default() as u64)
            .saturating_mul(1_000_000)
            .saturating_add(seq),
    }
}

/// A finished scan's unacknowledged entry ids.
struct StreamAck {
    source: String,
    endpoint: Endpoint,
    con: redis::aio::MultiplexedConnection,
    ids: Vec<String>,
}

#[async_trait]
impl PendingAck for StreamAck {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn messages(&self) -> u64 {
        self.ids.len() as u64
    }

    async fn commit(mut self: Box<Self>) -> Result<(), String> {
        for chunk in self.ids.chunks(ACK_CHUNK) {
            let _: u64 = redis::cmd("XACK")
                .arg(&self.endpoint.key)
                .arg(&self.endpoint.group)
                .arg(chunk)
                .query_async(&mut self.con)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn release(self: Box<Self>) {
        // Nothing to do: unacknowledged entries stay pending for this consumer, and its next
        // scan reads them first.
    }
}
