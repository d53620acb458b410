//! `INSERT INTO` a NATS table: each row is published to the table's subject as one message
//! (JSON, CSV or the raw column), and the statement succeeds only once JetStream acknowledged
//! every message. With `message_id`, each message carries a `Nats-Msg-Id` header, so a retried
//! statement's duplicates are dropped by the stream within its duplicate window.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::sink::DataSink;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;

use super::{Endpoint, Format};

/// Publishes awaiting acknowledgement at most this many at a time (bounded memory, and
/// pipelined round trips).
const IN_FLIGHT: usize = 1024;

#[derive(Debug)]
pub(crate) struct NatsSink {
    endpoint: Endpoint,
    schema: SchemaRef,
    declared: SchemaRef,
    format: Format,
    message_id: Option<usize>,
}

impl NatsSink {
    pub(crate) fn new(
        endpoint: Endpoint,
        schema: SchemaRef,
        declared: SchemaRef,
        format: Format,
        message_id: Option<String>,
    ) -> Result<Self> {
        if endpoint.subject.contains(['*', '>']) {
            return Err(DataFusionError::Plan(format!(
                "NATS table `{}`: cannot publish to the wildcard subject `{}`",
                endpoint.table, endpoint.subject
            )));
        }
        let message_id = message_id.map(|c| declared.index_of(&c)).transpose()?;
        Ok(Self {
            endpoint,
            schema,
            declared,
            format,
            message_id,
        })
    }
}

impl DisplayAs for NatsSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsSink(subject={})", self.endpoint.subject)
    }
}

#[async_trait]
impl DataSink for NatsSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let js = self.endpoint.jetstream().await?;
        let subject = self.endpoint.subject.clone();
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        let mut sent = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            // The declared columns (the message columns of an insert are ignored).
            let indices: Vec<usize> = (0..self.declared.fields().len()).collect();
            let batch = batch.project(&indices)?;
            let lines = crate::queue::encode::payloads(self.format, &batch)?;
            for (row, payload) in lines.into_iter().enumerate() {
                let publish = match self.message_id {
                    Some(col) => {
                        let mut headers = async_nats::HeaderMap::new();
                        let id = array_value_to_string(batch.column(col).as_ref(), row)?;
                        headers.insert("Nats-Msg-Id", id.as_str());
                        js.publish_with_headers(subject.clone(), headers, payload.into())
                            .await
                    }
                    None => js.publish(subject.clone(), payload.into()).await,
                };
                pending.push(publish.map_err(|e| self.endpoint.err("publishing", e))?);
                if pending.len() >= IN_FLIGHT {
                    sent += self.await_acks(&mut pending, sent).await?;
                }
            }
        }
        sent += self.await_acks(&mut pending, sent).await?;
        Ok(sent)
    }
}

impl NatsSink {
    async fn await_acks(
        &self,
        pending: &mut Vec<async_nats::jetstream::context::PublishAckFuture>,
        acked_before: u64,
    ) -> Result<u64> {
        let n = pending.len() as u64;
        for ack in pending.drain(..) {
            ack.await.map_err(|e| {
                self.endpoint.err(
                    "a message was not acknowledged",
                    format!(
                        "{e} ({acked_before} earlier messages were acknowledged; a retry may \
                         publish those again unless OPTIONS ('message_id' ...) is set)"
                    ),
                )
            })?;
        }
        Ok(n)
    }
}
