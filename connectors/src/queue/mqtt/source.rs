//! Bounded reads of an MQTT table: receive what the broker holds for the session into the spool
//! (acknowledging each message once it is on disk), then read the spool. A scan that read to
//! its end hands the session's [`engine::AckLedger`] an [`MqttAck`], which tells the spool what the
//! committed run consumed; one dropped early leaves the spool as it was.

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use engine::PendingAck;

use super::Mqtt;
use super::spool::{Record, Spool, SpoolError};
use crate::queue::broker::{MessageRead, Scan};
use crate::queue::rows::Message;

/// A scan reading the spool.
pub(crate) struct Read {
    mqtt: Mqtt,
    scan: Scan,
    cap: u64,
    spool: Spool,
    committed: u64,
    /// Messages with a sequence number below this were in the spool before the scan.
    first_new: u64,
    /// Segments not read yet, oldest first.
    segments: std::collections::VecDeque<std::path::PathBuf>,
    /// Records of the segment being read, not returned yet.
    records: std::collections::VecDeque<Record>,
    returned: u64,
    last_seq: Option<u64>,
}

pub(super) fn spool_err(mqtt: &Mqtt, e: SpoolError) -> DataFusionError {
    mqtt.err("spool", e)
}

impl Read {
    pub(super) async fn open(mqtt: Mqtt, scan: Scan) -> Result<Self> {
        let cap = scan.cap.unwrap_or(u64::MAX);
        let spool = Spool::open(&mqtt.spool_dir)
            .await
            .map_err(|e| spool_err(&mqtt, e))?;
        let committed = spool.committed().await.map_err(|e| spool_err(&mqtt, e))?;
        let pending = spool
            .pending(committed)
            .await
            .map_err(|e| spool_err(&mqtt, e))?;
        let first_new = pending.last_seq + 1;
        if pending.messages < cap {
            super::receive::receive(
                &mqtt,
                &spool,
                first_new,
                cap - pending.messages,
                scan.read.idle_timeout,
                mqtt.durable,
            )
            .await?;
        }
        let segments = spool
            .segments()
            .await
            .map_err(|e| spool_err(&mqtt, e))?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        Ok(Self {
            mqtt,
            scan,
            cap,
            spool,
            committed,
            first_new,
            segments,
            records: Default::default(),
            returned: 0,
            last_seq: None,
        })
    }
}

#[async_trait]
impl MessageRead for Read {
    /// Dropping the read early unlocks the spool and changes nothing in it.
    async fn next(&mut self, max: usize) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        while messages.len() < max && self.returned < self.cap {
            let Some(record) = self.records.pop_front() else {
                let Some(path) = self.segments.pop_front() else {
                    break;
                };
                self.records = self
                    .spool
                    .read_segment(&path, self.committed)
                    .await
                    .map_err(|e| spool_err(&self.mqtt, e))?
                    .into();
                continue;
            };
            self.returned += 1;
            self.last_seq = Some(record.seq);
            messages.push(message(record, self.first_new));
        }
        Ok(messages)
    }

    fn source(&self) -> String {
        format!(
            "{} (spool {})",
            self.mqtt.site.url(),
            self.spool.dir().display()
        )
    }

    /// The read ended: leave forgetting its messages to the session's run.
    async fn finish(self) {
        let (Some(last_seq), Some(ledger)) = (self.last_seq, self.scan.ledger.clone()) else {
            return; // nothing read, or no ledger: dropping unlocks the spool
        };
        ledger
            .push(Box::new(MqttAck {
                source: format!("MQTT topic `{}`", self.mqtt.topic),
                messages: self.returned,
                last_seq,
                spool: self.spool,
            }))
            .await;
    }
}

fn message(r: Record, first_new: u64) -> Message {
    Message {
        id: Some(r.seq.to_string()),
        timestamp_ms: Some(r.received_ms),
        headers: Some(format!("{{\"qos\":{},\"retain\":{}}}", r.qos, r.retain)),
        redelivered: r.dup || r.seq < first_new,
        offset: r.seq,
        key: r.topic,
        payload: r.payload,
    }
}

/// A finished scan's messages, still in the spool (which stays locked until settled).
struct MqttAck {
    source: String,
    messages: u64,
    last_seq: u64,
    spool: Spool,
}

#[async_trait]
impl PendingAck for MqttAck {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn messages(&self) -> u64 {
        self.messages
    }

    async fn commit(self: Box<Self>) -> Result<(), String> {
        self.spool
            .commit(self.last_seq)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(self: Box<Self>) {
        // The messages stay in the spool for the next scan; dropping unlocks it.
    }
}
