//! Moving what the broker holds for a table's session into its spool.
//!
//! The client's event loop runs on its own task, polled without interruption (cancelling a poll
//! midway can drop a packet it was writing), and hands the messages over a bounded channel. The
//! receiving side writes them to a new spool segment, flushes it to disk, and only then
//! acknowledges them: after a quiet millisecond (the broker sends only a few unacknowledged
//! messages at a time) or every [`ACK_EVERY`] messages.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::error::Result;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, SubAck, SubscribeReasonCode};
use tokio::sync::mpsc;

use super::Mqtt;
use super::source::spool_err;
use super::spool::{Record, SegmentWriter, Spool};

const ACK_AFTER_QUIET: Duration = Duration::from_millis(1);
const ACK_EVERY: usize = 1000;
/// How long connecting, subscribing and disconnecting may take.
const HANDSHAKE: Duration = Duration::from_secs(15);
/// How long a disconnecting session waits for the broker to close the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What the event loop task reports.
enum Incoming {
    Connected { session_present: bool },
    Message(rumqttc::Publish),
    Subscribed(SubAck),
    Failed(String),
}

/// Aborts the event loop task when the receive ends, however it ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connect the table's session and move up to `want` messages into a new spool segment whose
/// first sequence number is `first_seq`, each acknowledged to the broker once on disk. Ends
/// early when nothing arrives for `idle`.
pub(super) async fn receive(
    endpoint: &Mqtt,
    spool: &Spool,
    first_seq: u64,
    want: u64,
    idle: Duration,
    durable: bool,
) -> Result<()> {
    // The request channel holds every acknowledgement this receive can queue: while the event
    // loop task waits for room in the message channel, nothing drains it, and an
    // acknowledgement that had to wait for room there would deadlock the two.
    let room = usize::try_from(want)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let (client, events) = AsyncClient::new(endpoint.options(&endpoint.client_id, false), room);
    let (tx, mut rx) = mpsc::channel(ACK_EVERY);
    let mut driver = Driver(tokio::spawn(drive(events, tx)));
    let session_present = match tokio::time::timeout(HANDSHAKE, rx.recv()).await {
        Ok(Some(Incoming::Connected { session_present })) => session_present,
        Ok(Some(Incoming::Failed(e))) => return Err(endpoint.err("cannot connect", e)),
        Ok(_) => return Err(endpoint.err("cannot connect", "the connection closed")),
        Err(_) => return Err(endpoint.err("cannot connect", "timed out after 15 s")),
    };
    let recorded = spool.topic().await.map_err(|e| spool_err(endpoint, e))?;
    let mut subscribing = None;
    if !session_present || recorded.as_deref() != Some(endpoint.topic.as_str()) {
        if let Some(old) = recorded.as_deref().filter(|t| *t != endpoint.topic) {
            client
                .unsubscribe(old)
                .await
                .map_err(|e| endpoint.err("unsubscribing", e))?;
        }
        client
            .subscribe(&endpoint.topic, endpoint.qos)
            .await
            .map_err(|e| endpoint.err("subscribing", e))?;
        subscribing = Some(Instant::now());
    }
    let mut writer = spool.writer(first_seq);
    let mut unacked: Vec<rumqttc::Publish> = Vec::new();
    let mut received = 0u64;
    while received < want {
        let wait = if !unacked.is_empty() {
            ACK_AFTER_QUIET
        } else if subscribing.is_some() {
            HANDSHAKE
        } else {
            idle
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Incoming::Message(p))) => {
                writer.append(Record {
                    seq: 0,
                    received_ms: now_ms(),
                    qos: p.qos as u8,
                    retain: p.retain,
                    dup: p.dup,
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                });
                received += 1;
                if p.qos != QoS::AtMostOnce {
                    unacked.push(p);
                }
                if unacked.len() >= ACK_EVERY {
                    flush(endpoint, &client, &mut writer, &mut unacked, durable).await?;
                }
            }
            Ok(Some(Incoming::Subscribed(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(endpoint.err(
                        "subscribing",
                        "the broker refused the subscription (not authorised, or a bad topic filter)",
                    ));
                }
                spool
                    .set_topic(&endpoint.topic)
                    .await
                    .map_err(|e| spool_err(endpoint, e))?;
                subscribing = None;
            }
            Ok(Some(Incoming::Connected { .. })) => {}
            Ok(Some(Incoming::Failed(e))) => {
                // What was spooled but not acknowledged comes again: at-least-once.
                writer
                    .flush(durable)
                    .await
                    .map_err(|e| spool_err(endpoint, e))?;
                return Err(endpoint.err("connection lost while receiving", e));
            }
            Ok(None) => {
                return Err(endpoint.err("connection lost while receiving", "closed"));
            }
            Err(_) if !unacked.is_empty() => {
                flush(endpoint, &client, &mut writer, &mut unacked, durable).await?;
            }
            Err(_) if subscribing.is_some() => {
                return Err(endpoint.err("subscribing", "no SUBACK within 15 s"));
            }
            Err(_) => break, // quiet for idle_timeout_ms
        }
    }
    flush(endpoint, &client, &mut writer, &mut unacked, durable).await?;
    // Messages the broker sent past `want` stay unacknowledged: it delivers them again.
    drop(rx);
    let disconnected = client.disconnect().await.is_ok()
        && tokio::time::timeout(HANDSHAKE, &mut driver.0).await.is_ok();
    tracing::debug!(received, disconnected, "MQTT receive ended");
    Ok(())
}

/// Poll the event loop until it disconnects or fails, reporting what the receiver needs. Once
/// the receiver is gone, incoming messages are left unacknowledged (the broker sends them
/// again) while the queued acknowledgements and the disconnect go out.
async fn drive(mut events: EventLoop, tx: mpsc::Sender<Incoming>) {
    let mut acks = 0u64;
    loop {
        let report = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Incoming::Connected {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Message(p),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Incoming::Subscribed(ack),
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => {
                acks += 1;
                continue;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Wait for the broker to close the connection: it has then processed every
                // acknowledgement sent before the DISCONNECT. Closing first, with messages it
                // kept sending unread, resets the connection, and the broker may drop the last
                // acknowledgements unprocessed (and deliver those messages again).
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while events.poll().await.is_ok() {}
                })
                .await;
                tracing::debug!(acks, "MQTT session disconnected");
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Failed(e.to_string())).await;
                return;
            }
        };
        let _ = tx.send(report).await;
    }
}

/// Make the spooled messages durable, then acknowledge them to the broker.
async fn flush(
    endpoint: &Mqtt,
    client: &AsyncClient,
    writer: &mut SegmentWriter,
    unacked: &mut Vec<rumqttc::Publish>,
    durable: bool,
) -> Result<()> {
    writer
        .flush(durable)
        .await
        .map_err(|e| spool_err(endpoint, e))?;
    for p in unacked.drain(..) {
        client
            .ack(&p)
            .await
            .map_err(|e| endpoint.err("acknowledging", e))?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
