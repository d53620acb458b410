//! `INSERT INTO` an MQTT table: each row is published to the table's topic (JSON, CSV or the raw
//! column) at the table's QoS; the statement succeeds only once the broker acknowledged every
//! message (PUBACK for QoS 1, PUBCOMP for QoS 2; QoS 0 messages once written to the socket).
//! The publisher is its own short clean session, so it never disturbs the table's reading
//! session.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::sink::DataSink;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::sync::watch;

use super::Endpoint;
use crate::queue::decode::Format;

/// Publishes the client hands the event loop before it waits for acknowledgements.
const IN_FLIGHT: u16 = 1000;
/// A broker that acknowledges nothing for this long fails the statement.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct MqttSink {
    pub(crate) endpoint: Endpoint,
    pub(crate) schema: SchemaRef,
    pub(crate) declared: SchemaRef,
    pub(crate) format: Format,
    pub(crate) retain: bool,
}

impl DisplayAs for MqttSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MqttSink(topic={}, qos={})",
            self.endpoint.topic, self.endpoint.qos as u8
        )
    }
}

/// What the event loop task reports: messages acknowledged so far, or why it stopped.
type Progress = std::result::Result<u64, String>;

#[async_trait]
impl DataSink for MqttSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let id = format!(
            "flowengine-p{}",
            &uuid::Uuid::new_v4().simple().to_string()[..11]
        );
        let mut options = self.endpoint.options(&id, true);
        options.set_manual_acks(false).set_inflight(IN_FLIGHT);
        let (client, mut events) = AsyncClient::new(options, usize::from(IN_FLIGHT));
        let (tx, mut progress) = watch::channel::<Progress>(Ok(0));
        let qos = self.endpoint.qos;
        // The event loop runs beside the publishing, counting acknowledgements.
        let driver = tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => acked += 1,
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        acked += 1;
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = tx.send(Ok(acked));
            }
        });
        let result = self.publish_all(&client, &mut data, &mut progress).await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        result
    }
}

impl MqttSink {
    async fn publish_all(
        &self,
        client: &AsyncClient,
        data: &mut SendableRecordBatchStream,
        progress: &mut watch::Receiver<Progress>,
    ) -> Result<u64> {
        let mut sent = 0u64;
        let indices: Vec<usize> = (0..self.declared.fields().len()).collect();
        while let Some(batch) = data.next().await {
            let batch = batch?.project(&indices)?;
            for payload in crate::queue::encode::payloads(self.format, &batch)? {
                self.failed(progress, sent)?;
                client
                    .publish(
                        &self.endpoint.topic,
                        self.endpoint.qos,
                        self.retain,
                        payload,
                    )
                    .await
                    .map_err(|_| self.lost(progress, sent))?;
                sent += 1;
            }
        }
        // Every message acknowledged, or the statement fails.
        loop {
            let state = progress.borrow_and_update().clone();
            let Ok(acked) = state else {
                return Err(self.lost(progress, sent));
            };
            if acked >= sent {
                return Ok(sent);
            }
            match tokio::time::timeout(STALL, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.lost(progress, sent)),
                Err(_) => {
                    return Err(self.endpoint.err(
                        "publishing",
                        format!(
                            "the broker acknowledged {acked} of {sent} messages and then nothing for {} s",
                            STALL.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    /// Fail at once when the connection already broke.
    fn failed(&self, progress: &watch::Receiver<Progress>, sent: u64) -> Result<()> {
        match &*progress.borrow() {
            Ok(_) => Ok(()),
            Err(_) => Err(self.lost(progress, sent)),
        }
    }

    fn lost(
        &self,
        progress: &watch::Receiver<Progress>,
        sent: u64,
    ) -> datafusion::error::DataFusionError {
        let why = match &*progress.borrow() {
            Err(e) => e.clone(),
            Ok(_) => "the connection closed".into(),
        };
        let what = if sent == 0 {
            "cannot connect"
        } else {
            "publishing stopped"
        };
        self.endpoint.err(
            what,
            format!(
                "{why} ({sent} messages handed to the broker; acknowledged ones are not rolled back, a retry publishes them again)"
            ),
        )
    }
}
