//! `INSERT INTO` a RabbitMQ table: each row is published as one persistent message (JSON, CSV
//! or the raw column) with publisher confirms; the statement succeeds only once the broker
//! confirmed every message. Messages are published `mandatory`, so one that no queue would
//! receive fails the statement instead of vanishing.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::sink::DataSink;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use super::{Endpoint, Publish};
use crate::queue::decode::Format;

/// Publishes awaiting confirmation at most this many at a time.
const IN_FLIGHT: usize = 1024;

#[derive(Debug)]
pub(crate) struct RabbitSink {
    endpoint: Endpoint,
    schema: SchemaRef,
    declared: SchemaRef,
    format: Format,
    publish: Publish,
    message_id: Option<usize>,
}

impl RabbitSink {
    pub(crate) fn new(
        endpoint: Endpoint,
        schema: SchemaRef,
        declared: SchemaRef,
        format: Format,
        publish: Publish,
    ) -> Result<Self> {
        let message_id = publish
            .message_id
            .as_ref()
            .map(|c| declared.index_of(c))
            .transpose()?;
        Ok(Self {
            endpoint,
            schema,
            declared,
            format,
            publish,
            message_id,
        })
    }
}

impl DisplayAs for RabbitSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RabbitSink(exchange={:?}, routing_key={})",
            self.publish.exchange, self.publish.routing_key
        )
    }
}

#[async_trait]
impl DataSink for RabbitSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let (connection, channel, _) = self.endpoint.open().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.endpoint.err("enabling publisher confirms", e))?;
        let mut base = BasicProperties::default().with_content_type(
            match self.format {
                Format::Json => "application/json",
                Format::Csv => "text/csv",
                Format::Raw => "application/octet-stream",
            }
            .into(),
        );
        if self.publish.persistent {
            base = base.with_delivery_mode(2);
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        let mut sent = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let indices: Vec<usize> = (0..self.declared.fields().len()).collect();
            let batch = batch.project(&indices)?;
            let payloads = crate::queue::encode::payloads(self.format, &batch)?;
            for (row, payload) in payloads.into_iter().enumerate() {
                let mut properties = base.clone();
                if let Some(col) = self.message_id {
                    let id = array_value_to_string(batch.column(col).as_ref(), row)?;
                    properties = properties.with_message_id(id.as_str().into());
                }
                let confirm = channel
                    .basic_publish(
                        self.publish.exchange.as_str().into(),
                        self.publish.routing_key.as_str().into(),
                        options,
                        &payload,
                        properties,
                    )
                    .await
                    .map_err(|e| self.endpoint.err("publishing", e))?;
                pending.push(confirm);
                if pending.len() >= IN_FLIGHT {
                    sent += self.await_confirms(&mut pending, sent).await?;
                }
            }
        }
        sent += self.await_confirms(&mut pending, sent).await?;
        let _ = channel.close(200, "published".into()).await;
        let _ = connection.close(200, "done".into()).await;
        Ok(sent)
    }
}

impl RabbitSink {
    async fn await_confirms(
        &self,
        pending: &mut Vec<lapin::PublisherConfirm>,
        confirmed_before: u64,
    ) -> Result<u64> {
        let n = pending.len() as u64;
        let fail = |what: String| {
            self.endpoint.err(
                "a message was not confirmed",
                format!(
                    "{what} ({confirmed_before} earlier messages were confirmed; a retry publishes \
                     those again)"
                ),
            )
        };
        for confirm in pending.drain(..) {
            let confirmation = confirm.await.map_err(|e| fail(e.to_string()))?;
            match confirmation {
                lapin::Confirmation::Ack(None) => {}
                lapin::Confirmation::Ack(Some(_)) => {
                    return Err(fail(format!(
                        "no queue is bound to exchange {:?} with routing key `{}`",
                        self.publish.exchange, self.publish.routing_key
                    )));
                }
                lapin::Confirmation::Nack(_) => {
                    return Err(fail("the broker refused it (nack)".into()));
                }
                lapin::Confirmation::NotRequested => {
                    return Err(DataFusionError::Internal(
                        "publisher confirms were not enabled".into(),
                    ));
                }
            }
        }
        Ok(n)
    }
}
