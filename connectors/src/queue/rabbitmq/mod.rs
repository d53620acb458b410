//! RabbitMQ queues as tables: `STORED AS RABBITMQ`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE orders (id BIGINT, amount DOUBLE) STORED AS RABBITMQ
//! LOCATION 'amqp://127.0.0.1:5672/orders'
//! OPTIONS ('user' 'app', 'password' '${secret:RABBIT_PASSWORD}', 'on_error' 'dead_letter',
//!          'dead_letter_path' 'bad/orders-${batch}.jsonl');
//! COPY (SELECT * FROM orders) TO 'out/orders-${batch}.parquet';  -- consumes, acks after commit
//! SELECT * FROM orders LIMIT 10;         -- peek: the messages go back to the queue
//! INSERT INTO orders (id, amount) VALUES (1, 9.5);  -- publish, awaiting publisher confirms
//! ```
//!
//! A scan consumes the queue with manual acknowledgements, at most `max_messages` (10,000) and
//! no more than the queue held when it started, ending early when nothing arrives for
//! `idle_timeout_ms`. The broker holds at most `prefetch` unacknowledged messages for it (the
//! same bound: memory stays bounded whatever the queue's length). Its messages are acknowledged
//! only after the run that read them committed (see [`engine::acks`]); a failed run, a peek or a
//! crash leaves them in the queue, delivered again (`_redelivered` is then true): at-least-once.
//! Columns `_routing_key`, `_message_id`, `_timestamp`, `_headers` (JSON) and `_redelivered`
//! describe each message.

mod sink;
mod source;

use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::Result;
use engine::{ParamKind, ParamSpec, Secret, TableType};

use super::broker::{Broker, Definition, Scan, Site};
use super::decode::Format;
use super::rows::MessageColumns;

/// Default bound of one scan (and of the messages the broker lets it hold unacknowledged).
const DEFAULT_MAX_MESSAGES: u64 = 10_000;

/// A RabbitMQ queue: where it is, how to reach it and how `INSERT` publishes.
#[derive(Debug, Clone)]
pub(crate) struct RabbitMq {
    host: String,
    port: u16,
    vhost: String,
    user: Option<String>,
    password: Option<Secret>,
    queue: String,
    /// Declare the queue (durable) when missing; otherwise it must exist.
    declare: bool,
    /// Unacknowledged messages a scan may hold (default: its cap, at most 65535).
    prefetch: Option<u16>,
    exchange: String,
    routing_key: String,
    persistent: bool,
    site: Site,
}

#[async_trait]
impl Broker for RabbitMq {
    // Reads consume: messages are acknowledged after the run's sinks committed.
    const TABLE_TYPE: TableType = TableType::new("RABBITMQ").consuming();
    const LABEL: &'static str = "RabbitMQ";
    const SCHEME: &'static str = "amqp";
    const PATH: &'static str = "queue";
    const COLUMNS: MessageColumns =
        MessageColumns::new("_routing_key", "_message_id", "_timestamp", "_headers")
            .redelivered("_redelivered");
    const DEFAULT_MAX_MESSAGES: Option<u64> = Some(DEFAULT_MAX_MESSAGES);
    const MESSAGE_IDS: bool = true;
    const PARAMS: &'static [ParamSpec] = &[ParamSpec {
        name: "vhost / exchange / routing_key / prefetch / declare / persistent / message_id (RabbitMQ)",
        description: "virtual host (/); where INSERT publishes (default exchange, to the queue); unacknowledged messages a scan may hold; declare the queue when missing (true); persistent messages (true); the column whose value becomes the message id",
        kind: ParamKind::Plain,
    }];

    type Read = source::Read;
    type Publisher = sink::Publisher;

    fn define(def: &mut Definition<'_>) -> Result<Self> {
        if def.path.contains('/') {
            return Err(def.error(format!(
                "`{}` is not a queue name; give the virtual host with OPTIONS ('vhost' '...')",
                def.path
            )));
        }
        let (host, port) = def.host_port(5672)?;
        let prefetch: Option<u16> = def.options.parsed("prefetch")?;
        if prefetch == Some(0) {
            return Err(def.error("option `prefetch` must be at least 1"));
        }
        Ok(Self {
            host,
            port,
            vhost: def.options.string("vhost")?.unwrap_or_else(|| "/".into()),
            user: def.user.clone(),
            password: def.password.clone(),
            queue: def.path.to_string(),
            declare: def.options.parsed("declare")?.unwrap_or(true),
            prefetch,
            exchange: def.options.string("exchange")?.unwrap_or_default(),
            routing_key: def
                .options
                .string("routing_key")?
                .unwrap_or_else(|| def.path.to_string()),
            persistent: def.options.parsed("persistent")?.unwrap_or(true),
            site: def.site.clone(),
        })
    }

    async fn open_read(&self, scan: Scan) -> Result<Self::Read> {
        source::Read::open(self.clone(), scan).await
    }

    async fn publisher(&self, format: Format) -> Result<Self::Publisher> {
        sink::Publisher::open(self.clone(), format).await
    }

    fn describe(&self) -> String {
        format!(
            "exchange={:?}, routing_key={}",
            self.exchange, self.routing_key
        )
    }
}

impl RabbitMq {
    /// A new connection and channel (the queue declared when asked); the number of messages
    /// ready in the queue.
    async fn open(&self) -> Result<(lapin::Connection, lapin::Channel, u32)> {
        let mut uri = lapin::uri::AMQPUri {
            vhost: self.vhost.clone(),
            ..Default::default()
        };
        uri.authority.host = self.host.clone();
        uri.authority.port = self.port;
        if let Some(u) = &self.user {
            uri.authority.userinfo.username = u.clone();
        }
        if let Some(p) = &self.password {
            uri.authority.userinfo.password = p.expose().to_string();
        }
        let connect = lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default());
        let connection = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| self.site.unreachable("timed out after 15 s"))?
            .map_err(|e| self.site.unreachable(e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.site.err("opening a channel", e))?;
        let options = lapin::options::QueueDeclareOptions {
            passive: !self.declare,
            durable: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(
                self.queue.as_str().into(),
                options,
                lapin::types::FieldTable::default(),
            )
            .await
            .map_err(|e| self.site.err("declaring the queue", e))?;
        Ok((connection, channel, queue.message_count()))
    }
}
