//! Bounded reads of an MQTT table: receive what the broker holds for the session into the spool
//! (acknowledging each message once it is on disk), then read the spool. A scan that read to
//! its end hands the session's [`AckLedger`] an [`MqttAck`], which tells the spool what the
//! committed run consumed; one dropped early leaves the spool as it was.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::streaming::PartitionStream;
use engine::{AckLedger, PendingAck};

use super::Endpoint;
use super::spool::{Record, Spool, SpoolError};
use crate::queue::options::ReadOptions;
use crate::queue::rows::{Message, Origin, to_rows};
use crate::queue::scan::BoundedRead;

/// One scan of an MQTT table.
#[derive(Debug)]
pub(crate) struct MqttPartition {
    pub(crate) schema: SchemaRef,
    pub(crate) declared: SchemaRef,
    pub(crate) endpoint: Endpoint,
    pub(crate) read: ReadOptions,
    pub(crate) spool_dir: std::path::PathBuf,
    pub(crate) durable: bool,
    pub(crate) limit: Option<u64>,
}

impl PartitionStream for MqttPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = Reader {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            spool_dir: self.spool_dir.clone(),
            durable: self.durable,
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
    spool_dir: std::path::PathBuf,
    durable: bool,
    cap: u64,
    ledger: Option<Arc<AckLedger>>,
}

/// A scan reading the spool.
struct Open {
    reader: Reader,
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

pub(super) fn spool_err(endpoint: &Endpoint, e: SpoolError) -> DataFusionError {
    endpoint.err("spool", e)
}

impl Reader {
    async fn open(self) -> Result<Open> {
        let spool = Spool::open(&self.spool_dir)
            .await
            .map_err(|e| spool_err(&self.endpoint, e))?;
        let committed = spool
            .committed()
            .await
            .map_err(|e| spool_err(&self.endpoint, e))?;
        let pending = spool
            .pending(committed)
            .await
            .map_err(|e| spool_err(&self.endpoint, e))?;
        let first_new = pending.last_seq + 1;
        if pending.messages < self.cap {
            super::receive::receive(
                &self.endpoint,
                &spool,
                first_new,
                self.cap - pending.messages,
                self.read.idle_timeout,
                self.durable,
            )
            .await?;
        }
        let segments = spool
            .segments()
            .await
            .map_err(|e| spool_err(&self.endpoint, e))?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        Ok(Open {
            reader: self,
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
impl BoundedRead for Open {
    /// The next batch of decoded rows; `None` at the end of the bounded read. Dropping the read
    /// early unlocks the spool and changes nothing in it.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let r = &self.reader;
            let mut messages = Vec::new();
            while messages.len() < r.read.batch_size && self.returned < r.cap {
                let Some(record) = self.records.pop_front() else {
                    let Some(path) = self.segments.pop_front() else {
                        break;
                    };
                    self.records = self
                        .spool
                        .read_segment(&path, self.committed)
                        .await
                        .map_err(|e| spool_err(&r.endpoint, e))?
                        .into();
                    continue;
                };
                self.returned += 1;
                self.last_seq = Some(record.seq);
                messages.push(message(record, self.first_new));
            }
            if messages.is_empty() {
                return Ok(None);
            }
            let source = format!(
                "{} (spool {})",
                r.endpoint.display(),
                self.spool.dir().display()
            );
            let origin = Origin {
                source: &source,
                schema: &r.schema,
                declared: &r.declared,
                read: &r.read,
            };
            let rows = to_rows(&origin, &messages).await?;
            if rows.num_rows() > 0 {
                return Ok(Some(rows));
            }
        }
    }

    /// The read ended: leave forgetting its messages to the session's run.
    async fn finish(self) {
        let (Some(last_seq), Some(ledger)) = (self.last_seq, self.reader.ledger.clone()) else {
            return; // nothing read, or no ledger: dropping unlocks the spool
        };
        ledger
            .push(Box::new(MqttAck {
                source: format!("MQTT topic `{}`", self.reader.endpoint.topic),
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
