//! `INSERT INTO` a NATS table: each row is published to the table's subject as one message, and
//! counts once JetStream acknowledged it. With `message_id`, each message carries a
//! `Nats-Msg-Id` header, so a retried statement's duplicates are dropped by the stream within
//! its duplicate window.

use async_nats::jetstream::context::PublishAckFuture;
use async_trait::async_trait;
use datafusion::error::Result;

use super::Nats;
use crate::queue::broker::Outgoing;

/// A JetStream context publishing to the table's subject.
pub(crate) struct Publisher {
    nats: Nats,
    js: async_nats::jetstream::Context,
    pending: Vec<PublishAckFuture>,
}

impl Publisher {
    pub(super) fn new(nats: Nats, js: async_nats::jetstream::Context) -> Self {
        Self {
            nats,
            js,
            pending: Vec::new(),
        }
    }
}

#[async_trait]
impl crate::queue::broker::Publisher for Publisher {
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()> {
        let subject = self.nats.subject.clone();
        let publish = match message.id {
            Some(id) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                self.js
                    .publish_with_headers(subject, headers, message.payload.into())
                    .await
            }
            None => self.js.publish(subject, message.payload.into()).await,
        };
        self.pending
            .push(publish.map_err(|e| self.nats.site.err("publishing", e))?);
        Ok(())
    }

    async fn flush(&mut self) -> Result<u64> {
        let n = self.pending.len() as u64;
        for ack in self.pending.drain(..) {
            ack.await
                .map_err(|e| self.nats.site.err("a message was not acknowledged", e))?;
        }
        Ok(n)
    }
}
