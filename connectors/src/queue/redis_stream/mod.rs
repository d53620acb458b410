//! Redis streams as tables, read through a consumer group: `STORED AS REDIS_STREAM`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE clicks (user_id BIGINT, url VARCHAR) STORED AS REDIS_STREAM
//! LOCATION 'redis://127.0.0.1:6379/clicks'
//! OPTIONS ('group' 'etl', 'format' 'json', 'field' 'data', 'on_error' 'skip');
//! COPY (SELECT * FROM clicks) TO 'out/clicks-${batch}.parquet';  -- XACK after the run commits
//! INSERT INTO clicks (user_id, url) VALUES (7, '/home');          -- XADD
//! ```
//!
//! A scan reads as consumer `consumer` (default `flowengine`) of group `group` (default
//! `flowengine`, created at the stream's start, `start` '0', when missing): first the entries
//! this consumer was given earlier and never acknowledged (a failed run, a peek, a crash; they
//! show `_redelivered` true), then new ones, at most `max_messages` (10,000), ending when none is
//! left. Entries are acknowledged (`XACK`) only after the run that read them committed (see
//! [`engine::acks`]): at-least-once. The payload is the entry's `field` (default `data`) in
//! `format` json, csv or raw; format `fields` maps each declared column to the entry field of
//! the same name instead. Columns `_stream`, `_id`, `_timestamp` (the id's time), `_fields` (the
//! entry's other fields, JSON) and `_redelivered` describe each entry.

mod sink;
mod source;

use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::Result;
use engine::{ParamKind, ParamSpec, Secret, TableType};
use redis::IntoConnectionInfo;

use super::broker::{Broker, Definition, Scan, Site};
use super::decode::Format;
use super::rows::MessageColumns;

/// A Redis stream read through a consumer group: where it is and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct RedisStream {
    host: String,
    port: u16,
    db: i64,
    user: Option<String>,
    password: Option<Secret>,
    key: String,
    group: String,
    consumer: String,
    /// Where a new group starts: `0` (the whole stream) or `$` (only new entries).
    start: String,
    /// The entry field holding the payload; `None` with format `fields`.
    field: Option<String>,
    /// `XADD MAXLEN ~` trimming.
    maxlen: Option<usize>,
    site: Site,
}

#[async_trait]
impl Broker for RedisStream {
    // Reads consume: entries are acknowledged after the run's sinks committed.
    const TABLE_TYPE: TableType = TableType::new("REDIS_STREAM").consuming();
    const LABEL: &'static str = "Redis stream";
    const SCHEME: &'static str = "redis";
    const PATH: &'static str = "stream";
    const COLUMNS: MessageColumns =
        MessageColumns::new("_stream", "_id", "_timestamp", "_fields").redelivered("_redelivered");
    const DEFAULT_MAX_MESSAGES: Option<u64> = Some(10_000);
    const PARAMS: &'static [ParamSpec] = &[ParamSpec {
        name: "group / consumer / start / field / maxlen / db (Redis streams)",
        description: "consumer group (flowengine) and consumer name (flowengine); where a new group starts ('0' the whole stream, '$' new entries); the entry field holding the payload (data), or format 'fields' for one field per column; XADD MAXLEN ~ trimming; database number (0)",
        kind: ParamKind::Plain,
    }];

    type Read = source::Read;
    type Publisher = sink::Publisher;

    fn define(def: &mut Definition<'_>) -> Result<Self> {
        let (host, port) = def.host_port(6379)?;
        let fields = def
            .options
            .peek("format")
            .is_some_and(|f| f.eq_ignore_ascii_case("fields"));
        if fields {
            // Each declared column is an entry field: decoded as a JSON object of strings.
            def.options.set("format", "json");
        }
        let field = def
            .options
            .string("field")?
            .unwrap_or_else(|| "data".into());
        let start = def.options.string("start")?.unwrap_or_else(|| "0".into());
        if start != "0" && start != "$" {
            return Err(def.error(format!(
                "option `start` = `{start}`: expected '0' (the whole stream) or '$' (new entries)"
            )));
        }
        Ok(Self {
            host,
            port,
            db: def.options.parsed("db")?.unwrap_or(0),
            user: def.user.clone(),
            password: def.password.clone(),
            key: def.path.to_string(),
            group: def
                .options
                .string("group")?
                .unwrap_or_else(|| "flowengine".into()),
            consumer: def
                .options
                .string("consumer")?
                .unwrap_or_else(|| "flowengine".into()),
            start,
            field: (!fields).then_some(field),
            maxlen: def.options.parsed("maxlen")?,
            site: def.site.clone(),
        })
    }

    async fn open_read(&self, scan: Scan) -> Result<Self::Read> {
        source::Read::open(self.clone(), scan).await
    }

    async fn publisher(&self, _format: Format) -> Result<Self::Publisher> {
        Ok(sink::Publisher::new(self.clone(), self.connect().await?))
    }

    fn describe(&self) -> String {
        format!("stream={}", self.key)
    }
}

impl RedisStream {
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection> {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(u) = &self.user {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p.expose());
        }
        let info = redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .map_err(|e| self.site.err("bad address", e))?
            .set_redis_settings(settings.set_db(self.db));
        let client = redis::Client::open(info).map_err(|e| self.site.err("bad address", e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(15)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.site.unreachable(e))
    }

    /// Create the consumer group (and the stream) unless it exists.
    async fn ensure_group(&self, con: &mut redis::aio::MultiplexedConnection) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.start)
            .arg("MKSTREAM")
            .query_async(con)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self
                .site
                .err(&format!("creating consumer group `{}`", self.group), e)),
        }
    }
}
