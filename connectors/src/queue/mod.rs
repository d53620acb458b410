//! Message queues as tables. Sources read messages in bounded scans; sinks publish rows as
//! messages, awaiting the broker's acknowledgements. Each broker is one submodule implementing
//! [`broker::Broker`] (its protocol only) and one line in [`BROKERS`]; the table, scan, sink and
//! options every queue table shares are in [`broker`], once.
//!
//! Two ways of keeping progress, by what the broker offers:
//! * [`nats`]: NATS JetStream (`STORED AS NATS`): a stream keeps every message; scans do not
//!   consume, and progress between runs is an incremental view on `_sequence`, whose watermark
//!   the state store advances after the run's sinks committed.
//! * [`rabbitmq`]: RabbitMQ queues (`STORED AS RABBITMQ`) and [`redis_stream`]: Redis streams
//!   read through a consumer group (`STORED AS REDIS_STREAM`) consume: a scan's messages are
//!   acknowledged only after the run that read them committed (see [`engine::acks`]), and are
//!   delivered again when it failed or only peeked.
//! * [`mqtt`]: MQTT topics (`STORED AS MQTT`) through a persistent session: a scan moves the
//!   broker's messages into a local durable spool (acknowledging each once on disk), and the
//!   spool forgets them only after the run that read them committed.

pub(crate) mod broker;
pub(crate) mod decode;
pub(crate) mod encode;
#[cfg(test)]
mod memory;
pub(crate) mod options;
pub(crate) mod rows;
pub(crate) mod scan;

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis_stream;

use datafusion::error::Result;
use datafusion::execution::session_state::SessionStateBuilder;
use engine::{Connector, ParamKind, ParamSpec, TableType};

use broker::{Registered, Registration};

/// The brokers this build includes: one line each.
const BROKERS: &[&dyn Registered] = &[
    #[cfg(feature = "nats")]
    &Registration::<nats::Nats>::LINE,
    #[cfg(feature = "rabbitmq")]
    &Registration::<rabbitmq::RabbitMq>::LINE,
    #[cfg(feature = "redis")]
    &Registration::<redis_stream::RedisStream>::LINE,
    #[cfg(feature = "mqtt")]
    &Registration::<mqtt::Mqtt>::LINE,
];

/// Registers every message-queue table type this build includes.
#[derive(Debug)]
pub struct QueueConnector;

impl Connector for QueueConnector {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut params = PARAMS.to_vec();
        for b in BROKERS {
            params.extend_from_slice(b.params());
        }
        params
    }

    fn table_types(&self) -> Vec<TableType> {
        BROKERS.iter().map(|b| b.table_type()).collect()
    }

    fn register(&self, mut builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let factories = builder
            .table_factories()
            .get_or_insert_with(Default::default);
        for b in BROKERS {
            factories.insert(b.table_type().name.to_string(), b.factory());
        }
        Ok(builder)
    }
}

/// Options every queue table takes (each broker's own are in its module's documentation).
const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "LOCATION",
        description: "nats://host:port/subject, amqp://host:port/queue, redis://host:port/stream or mqtt://host:port/topic/filter",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "format",
        description: "json (default; one object per message), csv (one record) or raw (one text/binary column)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "max_messages / idle_timeout_ms / batch_size",
        description: "bounded reads: at most this many messages per scan; stop when none arrives for this long (5000); rows per batch (8192)",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "user / password",
        description: "credentials (use ${secret:NAME})",
        kind: ParamKind::Secret,
    },
    ParamSpec {
        name: "on_error / dead_letter_table / max_bad_records",
        description: "what to do with undecodable messages, as for CSV and JSON files",
        kind: ParamKind::Plain,
    },
    ParamSpec {
        name: "dead_letter_path",
        description: "the JSON-lines file undecodable messages go to (`${batch}` is replaced by the micro-batch number)",
        kind: ParamKind::Path,
    },
];

#[cfg(test)]
mod tests {
    #[test]
    fn consuming_tables_are_recognised() {
        let registry = crate::registry();
        assert!(registry.declares_consuming_table(
            "CREATE EXTERNAL TABLE q (a INT)\n  stored as rabbitmq LOCATION 'amqp://h/q'"
        ));
        assert!(!registry.declares_consuming_table(
            "CREATE EXTERNAL TABLE q (a INT) STORED AS NATS LOCATION 'nats://h/s'"
        ));
        // What each type declares is what the runtime and the cluster ask.
        let t = |name: &str| registry.table_type(name).expect(name);
        assert!(t("mqtt").consuming && !t("mqtt").distributable);
        assert!(t("NATS").distributable && !t("NATS").consuming);
        assert!(t("WEBHOOK").sink_only);
        assert!(t("POSTGRES").location_is_a_name && t("POSTGRES").distributable);
        assert!(registry.table_type("SOMETHING").is_none());
    }
}
