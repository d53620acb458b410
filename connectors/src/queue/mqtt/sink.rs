//! `INSERT INTO` an MQTT table: each row is published to the table's topic (JSON, CSV or the raw
//! column) at the table's QoS; the statement succeeds only once the broker acknowledged every
//! message (PUBACK for QoS 1, PUBCOMP for QoS 2; QoS 0 messages once written to the socket).
//! The publisher is its own short clean session, so it never disturbs the table's reading
//! session.

use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use rumqttc::{AsyncClient, Event, Outgoing as MqttOutgoing, Packet, QoS};
use tokio::sync::watch;

use super::Mqtt;
use crate::queue::broker::Outgoing;

/// Publishes the client hands the event loop before it waits for acknowledgements.
const IN_FLIGHT: u16 = 1000;
/// A broker that acknowledges nothing for this long fails the statement.
const STALL: Duration = Duration::from_secs(30);

/// What the event loop task reports: messages acknowledged so far, or why it stopped.
type Progress = std::result::Result<u64, String>;

/// A short clean session with its event loop running beside the publishing, counting
/// acknowledgements.
pub(crate) struct Publisher {
    mqtt: Mqtt,
    client: AsyncClient,
    progress: watch::Receiver<Progress>,
    driver: Option<tokio::task::JoinHandle<()>>,
    sent: u64,
    /// Acknowledgements counted by earlier flushes.
    flushed: u64,
}

impl Publisher {
    pub(super) fn start(mqtt: Mqtt) -> Self {
        let id = format!(
            "flowengine-p{}",
            &uuid::Uuid::new_v4().simple().to_string()[..11]
        );
        let mut options = mqtt.options(&id, true);
        options.set_manual_acks(false).set_inflight(IN_FLIGHT);
        let (client, mut events) = AsyncClient::new(options, usize::from(IN_FLIGHT));
        let (tx, progress) = watch::channel::<Progress>(Ok(0));
        let qos = mqtt.qos;
        let driver = tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => acked += 1,
                    Ok(Event::Outgoing(MqttOutgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        acked += 1;
                    }
                    Ok(Event::Outgoing(MqttOutgoing::Disconnect)) => return,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = tx.send(Ok(acked));
            }
        });
        Self {
            mqtt,
            client,
            progress,
            driver: Some(driver),
            sent: 0,
            flushed: 0,
        }
    }

    /// Why publishing stopped: the event loop's error, or a closed connection.
    fn lost(&self) -> DataFusionError {
        let why = match &*self.progress.borrow() {
            Err(e) => e.clone(),
            Ok(_) => "the connection closed".into(),
        };
        if self.sent == 0 {
            self.mqtt.site.unreachable(why)
        } else {
            self.mqtt.err("publishing stopped", why)
        }
    }
}

#[async_trait]
impl crate::queue::broker::Publisher for Publisher {
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()> {
        // Fail at once when the connection already broke.
        if self.progress.borrow().is_err() {
            return Err(self.lost());
        }
        self.client
            .publish(
                &self.mqtt.topic,
                self.mqtt.qos,
                self.mqtt.retain,
                message.payload,
            )
            .await
            .map_err(|_| self.lost())?;
        self.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<u64> {
        loop {
            let state = self.progress.borrow_and_update().clone();
            let Ok(acked) = state else {
                return Err(self.lost());
            };
            if acked >= self.sent {
                let newly = acked - self.flushed;
                self.flushed = acked;
                return Ok(newly);
            }
            match tokio::time::timeout(STALL, self.progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.lost()),
                Err(_) => {
                    return Err(self.mqtt.err(
                        "publishing",
                        format!(
                            "the broker acknowledged {acked} of {} messages and then nothing for {} s",
                            self.sent,
                            STALL.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.client.disconnect().await;
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }
    }
}
