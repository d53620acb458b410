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
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_plan::ExecutionPlan;
use rumqttc::{MqttOptions, QoS};

use super::options::{
    ReadOptions, declared_columns, planner, split_location, take_parsed, take_read_options,
    take_secret, with_message_columns,
};
use super::rows::MessageColumns;
use crate::http::{options_of, reject_unknown};

/// Registers `STORED AS MQTT`.
pub(crate) fn register(builder: &mut SessionStateBuilder) {
    builder
        .table_factories()
        .get_or_insert_with(Default::default)
        .insert("MQTT".into(), Arc::new(MqttFactory));
}

pub(crate) const COLUMNS: MessageColumns = MessageColumns {
    key: "_topic",
    id: "_spool_seq",
    timestamp: "_timestamp",
    headers: "_properties",
    redelivered: "_redelivered",
};

const DEFAULT_MAX_MESSAGES: u64 = 10_000;
/// Largest message accepted or published by default (Mosquitto allows up to 256 MB).
const DEFAULT_MAX_PACKET: usize = 16 * 1024 * 1024;

/// Where a table's topic is and how to reach it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    /// The topic filter (wildcards allowed for reading; not for publishing).
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) client_id: String,
    keep_alive: Duration,
    max_packet: usize,
    pub(crate) table: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::External(
            format!(
                "MQTT table `{}` (mqtt://{}:{}, topic `{}`): {what}: {e}",
                self.table, self.host, self.port, self.topic
            )
            .into(),
        )
    }

    /// `mqtt://host:port/topic`, for messages (no credentials).
    pub(crate) fn display(&self) -> String {
        format!("mqtt://{}:{}/{}", self.host, self.port, self.topic)
    }

    /// Client options for `client_id`: a persistent session unless `clean`.
    pub(crate) fn options(&self, client_id: &str, clean: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(clean)
            .set_manual_acks(true)
            .set_max_packet_size(self.max_packet, self.max_packet);
        if let Some(user) = &self.user {
            o.set_credentials(user, self.password.clone().unwrap_or_default());
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

#[derive(Debug)]
struct MqttFactory;

#[async_trait]
impl TableProviderFactory for MqttFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let plan = planner("MQTT", cmd.name.to_string());
        let (authority, topic) = split_location(cmd, "mqtt", "topic", &plan)?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| plan(format!("bad port `{p}` in LOCATION")))?,
            ),
            None => (authority.to_string(), 1883),
        };
        let declared = declared_columns(cmd, &COLUMNS.names(), &plan)?;
        let mut opts = options_of(cmd);
        let user = take_secret(state, &mut opts, "user", &plan)?;
        let password = take_secret(state, &mut opts, "password", &plan)?;
        let read = take_read_options(
            state,
            &mut opts,
            &declared,
            Some(DEFAULT_MAX_MESSAGES),
            &plan,
        )?;
        let qos = match take_parsed::<u8>(&mut opts, "qos", &plan)?.unwrap_or(1) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => return Err(plan(format!("option `qos` = {q}: MQTT has QoS 0, 1 and 2"))),
        };
        let client_id = opts
            .remove("client_id")
            .unwrap_or_else(|| default_client_id(authority, topic));
        if client_id.is_empty() || client_id.len() > 65_535 {
            return Err(plan("option `client_id` must not be empty".into()));
        }
        let spool_dir = match opts.remove("spool_dir") {
            Some(d) => PathBuf::from(d),
            None => state
                .config()
                .get_extension::<engine::EngineConfig>()
                .map(|c| c.effective_state_dir())
                .unwrap_or_else(|| PathBuf::from(".flowengine"))
                .join("spool")
                .join("mqtt")
                .join(sanitize(&client_id)),
        };
        let endpoint = Endpoint {
            host,
            port,
            user,
            password,
            topic: topic.to_string(),
            qos,
            client_id,
            keep_alive: Duration::from_secs(
                take_parsed(&mut opts, "keep_alive_secs", &plan)?
                    .unwrap_or(30u64)
                    .max(5),
            ),
            max_packet: take_parsed(&mut opts, "max_packet_size", &plan)?
                .unwrap_or(DEFAULT_MAX_PACKET),
            table: cmd.name.to_string(),
        };
        let durable = take_parsed(&mut opts, "spool_fsync", &plan)?.unwrap_or(true);
        let retain = take_parsed(&mut opts, "retain", &plan)?.unwrap_or(false);
        reject_unknown(&opts, &plan)?;
        Ok(Arc::new(MqttTable {
            schema: with_message_columns(&declared, COLUMNS.fields()),
            declared,
            endpoint,
            read,
            spool_dir,
            durable,
            retain,
        }))
    }
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

/// An MQTT topic as a table.
#[derive(Debug)]
pub(crate) struct MqttTable {
    schema: SchemaRef,
    declared: SchemaRef,
    endpoint: Endpoint,
    read: ReadOptions,
    spool_dir: PathBuf,
    /// `fsync` the spool before acknowledging to the broker (off: survives a crash of the
    /// process, not of the machine).
    durable: bool,
    retain: bool,
}

#[async_trait]
impl TableProvider for MqttTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition = source::MqttPartition {
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            endpoint: self.endpoint.clone(),
            read: self.read.clone(),
            spool_dir: self.spool_dir.clone(),
            durable: self.durable,
            limit: limit.map(|l| l as u64),
        };
        crate::queue::scan::plan(&self.schema, Arc::new(partition), projection, limit)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op != InsertOp::Append {
            return Err(DataFusionError::Plan(format!(
                "MQTT table `{}`: only INSERT INTO (append) is supported",
                self.endpoint.table
            )));
        }
        if self.endpoint.topic.contains(['+', '#']) {
            return Err(DataFusionError::Plan(format!(
                "MQTT table `{}`: cannot publish to topic filter `{}` (it has wildcards)",
                self.endpoint.table, self.endpoint.topic
            )));
        }
        let sink = sink::MqttSink {
            endpoint: self.endpoint.clone(),
            schema: Arc::clone(&self.schema),
            declared: Arc::clone(&self.declared),
            format: self.read.format,
            retain: self.retain,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
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
