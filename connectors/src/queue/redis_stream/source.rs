//! Bounded, consuming reads of a Redis stream through a consumer group: this consumer's
//! unacknowledged entries first, then new ones, until none is left or `max_messages`. A scan
//! that read to its end hands the session's [`engine::AckLedger`] the entry ids, acknowledged (`XACK`)
//! when the run commits; otherwise they stay pending and the next scan reads them again.
//! In a session that never acknowledges (a peek), the scan reads with `XRANGE` past the group's
//! last delivered entry instead, so it changes nothing.

use async_trait::async_trait;
use datafusion::error::Result;
use engine::PendingAck;
use redis::Value;
use redis::streams::{StreamId, StreamReadReply};

use super::RedisStream;
use crate::queue::broker::{MessageRead, Scan};
use crate::queue::rows::Message;

/// Entry ids per `XACK`.
const ACK_CHUNK: usize = 1000;

/// An open read.
pub(crate) struct Read {
    redis: RedisStream,
    scan: Scan,
    con: redis::aio::MultiplexedConnection,
    cap: u64,
    /// Where the next read starts: an id within this consumer's pending entries, or `>` for
    /// new entries.
    cursor: String,
    ids: Vec<String>,
    done: bool,
    /// A session that never acknowledges (`flowengine sql`, the Flight SQL server): read with
    /// `XRANGE` past the group's last delivered entry, changing nothing in the group.
    peek: bool,
}

impl Read {
    pub(super) async fn open(redis: RedisStream, scan: Scan) -> Result<Self> {
        let mut con = redis.connect().await?;
        let peek = !scan.ledger.as_ref().is_some_and(|l| l.is_enabled());
        let cursor = if peek {
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&redis.key)
                    .query_async(&mut con)
                    .await;
            let delivered = groups.ok().and_then(|g| {
                g.groups
                    .into_iter()
                    .find(|g| g.name == redis.group)
                    .map(|g| g.last_delivered_id)
            });
            match delivered {
                Some(id) => id,
                // No group yet: what it would start with.
                None if redis.start == "$" => "+".into(),
                None => "0-0".into(),
            }
        } else {
            redis.ensure_group(&mut con).await?;
            "0".into()
        };
        let cap = scan.cap.unwrap_or(u64::MAX);
        Ok(Self {
            done: cap == 0 || cursor == "+",
            redis,
            scan,
            con,
            cap,
            cursor,
            ids: Vec::new(),
            peek,
        })
    }
}

#[async_trait]
impl MessageRead for Read {
    /// Dropping the read early leaves the entries it read pending: the next scan reads them
    /// again.
    async fn next(&mut self, max: usize) -> Result<Vec<Message>> {
        loop {
            if self.done {
                return Ok(Vec::new());
            }
            let r = &self.redis;
            let room = self.cap - self.ids.len() as u64;
            let count = (max as u64).min(room).max(1);
            let (entries, redelivered) = if self.peek {
                let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&r.key)
                    .arg(format!("({}", self.cursor))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut self.con)
                    .await
                    .map_err(|e| r.site.err("reading entries", e))?;
                if let Some(last) = range.ids.last() {
                    self.cursor = last.id.clone();
                }
                (range.ids, false)
            } else {
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&r.group)
                    .arg(&r.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&r.key)
                    .arg(&self.cursor)
                    .query_async(&mut self.con)
                    .await
                    .map_err(|e| r.site.err("reading entries", e))?;
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
                return Ok(Vec::new());
            }
            let messages: Vec<Message> = entries
                .iter()
                .map(|e| message(&self.redis, e, redelivered))
                .collect();
            self.ids.extend(entries.into_iter().map(|e| e.id));
            if self.ids.len() as u64 >= self.cap {
                self.done = true;
            }
            return Ok(messages);
        }
    }

    fn source(&self) -> String {
        self.redis.site.url().to_string()
    }

    async fn finish(mut self) {
        let Some(ledger) = self.scan.ledger.clone() else {
            return;
        };
        if self.peek {
            return;
        }
        // The group's lag: entries not yet delivered to it (Redis 7+; unknown before).
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.redis.key)
            .query_async(&mut self.con)
            .await;
        if let Some(lag) = groups.ok().and_then(|g| {
            g.groups
                .into_iter()
                .find(|g| g.name == self.redis.group)
                .and_then(|g| g.lag)
        }) {
            ledger.note_backlog(self.redis.site.url(), lag as u64);
        }
        if self.ids.is_empty() {
            return;
        }
        ledger
            .push(Box::new(StreamAck {
                source: format!(
                    "Redis stream `{}` (group `{}`)",
                    self.redis.key, self.redis.group
                ),
                redis: self.redis,
                con: self.con,
                ids: self.ids,
            }))
            .await;
    }
}

/// An entry as a message: the payload field (or, with format `fields`, every field as a JSON
/// object) and the other fields as `_fields`.
fn message(endpoint: &RedisStream, e: &StreamId, redelivered: bool) -> Message {
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
    redis: RedisStream,
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
                .arg(&self.redis.key)
                .arg(&self.redis.group)
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
