//! MQTT topics as tables: `STORED AS MQTT` (MQTT 3.1.1, any broker; tested with Mosquitto).
//!
//! ```sql
//! CREATE EXTERNAL TABLE readings (sensor VARCHAR, value DOUBLE) STORED AS MQTT
//! LOCATION 'mqtt://127.0.0.1:1883/plant/+/readings'
//! OPTIONS ('client_id' 'plant-etl', 'on_error' 'dead_letter',
//!          'dead_letter_path' 'bad/readings-${batch}.jsonl');
//! COPY (SELECT * FROM readings) TO 'out/readings-${batch}.parquet';  -- consumes after commit
//! SELECT * FROM readings LIMIT 10;  -- peek
//! INSERT INTO readings (sensor, value) VALUES ('s1', 20.5);  -- publish, awaiting PUBACKs
//! ```
//!
//! A scan keeps a persistent broker session (`client_id`, clean session off, subscribed at QoS
//! `qos`, default 1) and moves the messages the broker has for it into a local durable spool
//! ([`spool`]): each is written and flushed to disk before it is acknowledged to the broker.
//! The scan then reads the spool: messages earlier scans left there first, then the new ones,
//! at most `max_messages` (10,000), ending when nothing arrives for `idle_timeout_ms`. The
//! spool forgets them only after the run that read them committed (see [`engine::acks`]); a
//! failed run, a peek or a crash leaves them to the next scan (`_redelivered` is then true).
//! Columns `_topic`, `_spool_seq` (the message's place in the spool), `_timestamp` (when it
//! was received: MQTT 3.1.1 carries no time), `_properties` (JSON: qos, retain) and
//! `_redelivered` describe each message.
//!
//! The spool lives in `spool_dir` (default `<state_dir>/spool/mqtt/<client_id>`); one process
//! and one scan at a time use it (an OS file lock).

mod receive;
mod sink;
mod source;
mod spool;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use engine::{ParamKind, ParamSpec, Secret, TableType};
use rumqttc::{MqttOptions, QoS};

use super::broker::{Broker, Definition, Scan, Site};
use super::decode::Format;
use super::rows::MessageColumns;

/// Largest message accepted or published by default (Mosquitto allows up to 256 MB).
const DEFAULT_MAX_PACKET: usize = 16 * 1024 * 1024;

/// An MQTT topic: where it is, how to reach it, and the local spool of its session.
#[derive(Debug, Clone)]
pub(crate) struct Mqtt {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<Secret>,
    /// The topic filter (wildcards allowed for reading; not for publishing).
    topic: String,
    qos: QoS,
    client_id: String,
    keep_alive: Duration,
    max_packet: usize,
    spool_dir: PathBuf,
    /// `fsync` the spool before acknowledging to the broker (off: survives a crash of the
    /// process, not of the machine).
    durable: bool,
    retain: bool,
    site: Site,
}

#[async_trait]
impl Broker for Mqtt {
    // Reads consume: the spool forgets messages after the run's sinks committed.
    const TABLE_TYPE: TableType = TableType::new("MQTT").consuming();
    const LABEL: &'static str = "MQTT";
    const SCHEME: &'static str = "mqtt";
    const PATH: &'static str = "topic";
    const COLUMNS: MessageColumns =
        MessageColumns::new("_topic", "_spool_seq", "_timestamp", "_properties")
            .redelivered("_redelivered");
    const DEFAULT_MAX_MESSAGES: Option<u64> = Some(10_000);
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec {
            name: "client_id / qos / spool_fsync / retain / keep_alive_secs / max_packet_size (MQTT)",
            description: "persistent session id (derived from server and topic); subscribe and publish QoS (1); fsync the spool before acknowledging (true); publish retained; keep-alive (30); largest message (16 MiB)",
            kind: ParamKind::Plain,
        },
        ParamSpec {
            name: "spool_dir (MQTT)",
            description: "the local spool (<state_dir>/spool/mqtt/<client_id>)",
            kind: ParamKind::Path,
        },
    ];

    type Read = source::Read;
    type Publisher = sink::Publisher;

    fn define(def: &mut Definition<'_>) -> Result<Self> {
        let (host, port) = def.host_port(1883)?;
        let qos = match def.options.parsed::<u8>("qos")?.unwrap_or(1) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => return Err(def.error(format!("option `qos` = {q}: MQTT has QoS 0, 1 and 2"))),
        };
        let client_id = def
            .options
            .string("client_id")?
            .unwrap_or_else(|| default_client_id(def.server, def.path));
        if client_id.is_empty() || client_id.len() > 65_535 {
            return Err(def.error("option `client_id` must not be empty"));
        }
        let spool_dir = match def.options.string("spool_dir")? {
            Some(d) => PathBuf::from(d),
            None => def
                .options
                .state()
                .config()
                .get_extension::<engine::EngineConfig>()
                .map(|c| c.effective_state_dir())
                .unwrap_or_else(|| PathBuf::from(".flowengine"))
                .join("spool")
                .join("mqtt")
                .join(sanitize(&client_id)),
        };
        Ok(Self {
            host,
            port,
            user: def.user.clone(),
            password: def.password.clone(),
            topic: def.path.to_string(),
            qos,
            client_id,
            keep_alive: Duration::from_secs(
                def.options
                    .parsed("keep_alive_secs")?
                    .unwrap_or(30u64)
                    .max(5),
            ),
            max_packet: def
                .options
                .parsed("max_packet_size")?
                .unwrap_or(DEFAULT_MAX_PACKET),
            spool_dir,
            durable: def.options.parsed("spool_fsync")?.unwrap_or(true),
            retain: def.options.parsed("retain")?.unwrap_or(false),
            site: def.site.clone(),
        })
    }

    fn cannot_publish(&self) -> Option<String> {
        self.topic.contains(['+', '#']).then(|| {
            format!(
                "cannot publish to topic filter `{}` (it has wildcards)",
                self.topic
            )
        })
    }

    async fn open_read(&self, scan: Scan) -> Result<Self::Read> {
        source::Read::open(self.clone(), scan).await
    }

    async fn publisher(&self, _format: Format) -> Result<Self::Publisher> {
        Ok(sink::Publisher::start(self.clone()))
    }

    fn describe(&self) -> String {
        format!("topic={}, qos={}", self.topic, self.qos as u8)
    }
}

impl Mqtt {
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        self.site.err(what, e)
    }

    /// Client options for `client_id`: a persistent session unless `clean`.
    pub(crate) fn options(&self, client_id: &str, clean: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(clean)
            .set_manual_acks(true)
            .set_max_packet_size(self.max_packet, self.max_packet);
        if let Some(user) = &self.user {
            o.set_credentials(
                user,
                self.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            );
        }
        o
    }
}

/// A stable default client id for a topic on a server: 23 characters at most, the limit every
/// MQTT 3.1.1 broker must accept.
fn default_client_id(host: &str, topic: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([0]).chain(topic.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("flowengine-{:012x}", h >> 16)
}

/// A client id as a directory name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_client_ids_are_stable_and_short() {
        let a = default_client_id("127.0.0.1:1883", "plant/+/readings");
        assert_eq!(a, default_client_id("127.0.0.1:1883", "plant/+/readings"));
        assert_ne!(a, default_client_id("127.0.0.1:1883", "plant/+/alarms"));
        assert!(a.len() <= 23, "{a}");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }
}
