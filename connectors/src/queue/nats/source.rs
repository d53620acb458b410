//! Bounded reads of a JetStream subject: an ordered consumer (no acks, nothing consumed) from
//! the start sequence up to the last message present when the scan started.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use futures::StreamExt;

use super::Nats;
use crate::queue::broker::{MessageRead, Scan};
use crate::queue::rows::Message;

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

/// An open read: the consumer's messages, up to the stream's last message when it started.
pub(crate) struct Read {
    nats: Nats,
    scan: Scan,
    messages: Option<async_nats::jetstream::consumer::pull::Ordered>,
    /// The stream's last sequence when the scan started.
    last: u64,
    read_so_far: u64,
    /// Stream sequence of the last message read (the one before the start when none was).
    last_read: u64,
    done: bool,
}

impl Read {
    pub(super) async fn open(nats: Nats, scan: Scan) -> Result<Self> {
        let js = nats.jetstream().await?;
        let mut stream = nats.stream(&js).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| nats.site.err("reading stream info", e))?;
        let (first, last, count) = (
            info.state.first_sequence,
            info.state.last_sequence,
            info.state.messages,
        );
        let from = start_sequence(&scan.filters);
        let start = from.max(first).max(1);
        let empty = count == 0 || start > last || scan.cap == Some(0);
        let messages = if empty {
            None
        } else {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: nats.subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| nats.site.err("creating a consumer", e))?;
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|e| nats.site.err("reading messages", e))?,
            )
        };
        Ok(Self {
            last_read: start.saturating_sub(1).max(from.saturating_sub(1)),
            nats,
            scan,
            messages,
            last,
            read_so_far: 0,
            done: empty,
        })
    }
}

#[async_trait]
impl MessageRead for Read {
    async fn next(&mut self, max: usize) -> Result<Vec<Message>> {
        let mut batch = Vec::new();
        let Some(messages) = self.messages.as_mut() else {
            return Ok(batch);
        };
        while !self.done && batch.len() < max {
            if self.scan.cap.is_some_and(|c| self.read_so_far >= c) {
                self.done = true;
                break;
            }
            let next = tokio::time::timeout(self.scan.read.idle_timeout, messages.next()).await;
            let message = match next {
                // Quiet for idle_timeout: the bounded read ends here.
                Err(_) | Ok(None) => {
                    self.done = true;
                    break;
                }
                Ok(Some(m)) => m.map_err(|e| self.nats.site.err("reading messages", e))?,
            };
            let info = message
                .info()
                .map(|i| (i.stream_sequence, i.pending, i.published))
                .map_err(|e| self.nats.site.err("reading message metadata", e))?;
            self.read_so_far += 1;
            self.last_read = info.0;
            batch.push(Message {
                key: message.subject.to_string(),
                id: Some(info.0.to_string()),
                timestamp_ms: Some((info.2.unix_timestamp_nanos() / 1_000_000) as i64),
                headers: message.headers.as_ref().and_then(headers_json),
                redelivered: false,
                offset: info.0,
                payload: message.payload.to_vec(),
            });
            if info.0 >= self.last || info.1 == 0 {
                self.done = true;
            }
        }
        Ok(batch)
    }

    fn source(&self) -> String {
        self.nats.site.url().to_string()
    }

    async fn finish(self) {
        if let Some(ledger) = &self.scan.ledger {
            ledger.note_backlog(
                self.nats.site.url(),
                self.last.saturating_sub(self.last_read),
            );
        }
    }
}

/// A message's headers as a JSON object (a header with several values as an array).
fn headers_json(h: &async_nats::HeaderMap) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|(k, v)| {
            let values: Vec<serde_json::Value> = v.iter().map(|x| x.as_str().into()).collect();
            let value = match values.len() {
                1 => values.into_iter().next().unwrap_or_default(),
                _ => values.into(),
            };
            (k.to_string(), value)
        })
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}
