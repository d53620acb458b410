//! `INSERT INTO` a RabbitMQ table: each row is published as one message (persistent unless
//! OPTIONS say otherwise) with publisher confirms, and counts once the broker confirmed it.
//! Messages are published `mandatory`, so one that no queue would receive fails the statement
//! instead of vanishing.

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use super::RabbitMq;
use crate::queue::broker::Outgoing;
use crate::queue::decode::Format;

/// A channel in confirm mode.
pub(crate) struct Publisher {
    rabbit: RabbitMq,
    connection: lapin::Connection,
    channel: lapin::Channel,
    properties: BasicProperties,
    pending: Vec<lapin::PublisherConfirm>,
}

impl Publisher {
    pub(super) async fn open(rabbit: RabbitMq, format: Format) -> Result<Self> {
        let (connection, channel, _) = rabbit.open().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| rabbit.site.err("enabling publisher confirms", e))?;
        let mut properties = BasicProperties::default().with_content_type(
            match format {
                Format::Json => "application/json",
                Format::Csv => "text/csv",
                Format::Raw => "application/octet-stream",
            }
            .into(),
        );
        if rabbit.persistent {
            properties = properties.with_delivery_mode(2);
        }
        Ok(Self {
            rabbit,
            connection,
            channel,
            properties,
            pending: Vec::new(),
        })
    }
}

#[async_trait]
impl crate::queue::broker::Publisher for Publisher {
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()> {
        let mut properties = self.properties.clone();
        if let Some(id) = message.id {
            properties = properties.with_message_id(id.as_str().into());
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                self.rabbit.exchange.as_str().into(),
                self.rabbit.routing_key.as_str().into(),
                options,
                &message.payload,
                properties,
            )
            .await
            .map_err(|e| self.rabbit.site.err("publishing", e))?;
        self.pending.push(confirm);
        Ok(())
    }

    async fn flush(&mut self) -> Result<u64> {
        let n = self.pending.len() as u64;
        let site = &self.rabbit.site;
        let fail = |why: String| site.err("a message was not confirmed", why);
        for confirm in self.pending.drain(..) {
            match confirm.await.map_err(|e| fail(e.to_string()))? {
                lapin::Confirmation::Ack(None) => {}
                lapin::Confirmation::Ack(Some(_)) => {
                    return Err(fail(format!(
                        "no queue is bound to exchange {:?} with routing key `{}`",
                        self.rabbit.exchange, self.rabbit.routing_key
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

    async fn close(&mut self) {
        let _ = self.channel.close(200, "published".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}
