//! NATS JetStream streams as tables: `STORED AS NATS`.
//!
//! ```sql
//! CREATE EXTERNAL TABLE events (id BIGINT, kind VARCHAR) STORED AS NATS
//! LOCATION 'nats://127.0.0.1:4222/events.>'
//! OPTIONS ('format' 'json', 'on_error' 'dead_letter', 'dead_letter_path' 'bad/events.jsonl');
//! SELECT * FROM events LIMIT 10;                    -- peek: nothing is consumed
//! CREATE INCREMENTAL VIEW new_events ON events BY _sequence;
//! COPY (SELECT * FROM new_events) TO 'out/events.parquet';   -- each run: only new messages
//! INSERT INTO events VALUES (1, 'signup');          -- publish, awaiting JetStream's acks
//! ```
//!
//! A scan reads the stream holding the subject with an ordered consumer (no acks, nothing is
//! consumed or deleted), from the first message (or past a `_sequence >`/`>=` filter) up to the
//! last message present when the scan started, at most `max_messages`. Progress across runs is
//! the incremental view's watermark on `_sequence`, which the state store advances only after the
//! run's sinks committed: at-least-once (a crash between those two commits repeats a run's
//! messages).
//! Columns `_subject`, `_sequence`, `_timestamp` and `_headers` (JSON) describe each message.

mod sink;
mod source;

use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use engine::{ParamKind, ParamSpec, Secret, TableType};

use super::broker::{Broker, Definition, Site};
use super::decode::Format;
use super::rows::MessageColumns;

/// A JetStream subject: where a table's messages live and how to reach them.
#[derive(Debug, Clone)]
pub(crate) struct Nats {
    /// `nats://host:port` (no credentials).
    server: String,
    subject: String,
    stream: Option<String>,
    user: Option<String>,
    password: Option<Secret>,
    token: Option<Secret>,
    site: Site,
}

#[async_trait]
impl Broker for Nats {
    // A stream that is read, not consumed: executors read their own ranges.
    const TABLE_TYPE: TableType = TableType::new("NATS").distributable();
    const LABEL: &'static str = "NATS";
    const SCHEME: &'static str = "nats";
    const PATH: &'static str = "subject";
    const COLUMNS: MessageColumns =
        MessageColumns::new("_subject", "_sequence", "_timestamp", "_headers").offset_id();
    const DEFAULT_MAX_MESSAGES: Option<u64> = None;
    const MESSAGE_IDS: bool = true;
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec {
            name: "stream / message_id (NATS)",
            description: "the JetStream stream; the column whose value becomes the Nats-Msg-Id header (duplicates dropped)",
            kind: ParamKind::Plain,
        },
        ParamSpec {
            name: "token (NATS)",
            description: "an authentication token instead of user and password (use ${secret:NAME})",
            kind: ParamKind::Secret,
        },
    ];

    type Read = source::Read;
    type Publisher = sink::Publisher;

    fn define(def: &mut Definition<'_>) -> Result<Self> {
        Ok(Self {
            server: format!("nats://{}", def.server),
            subject: def.path.to_string(),
            stream: def.options.string("stream")?,
            user: def.user.clone(),
            password: def.password.clone(),
            token: def.options.secret("token")?,
            site: def.site.clone(),
        })
    }

    fn cannot_publish(&self) -> Option<String> {
        self.subject
            .contains(['*', '>'])
            .then(|| format!("cannot publish to the wildcard subject `{}`", self.subject))
    }

    fn narrows_read(&self, filter: &Expr) -> bool {
        // `_sequence` bounds pick where the consumer starts.
        source::start_sequence(std::slice::from_ref(filter)) > 0
    }

    async fn open_read(&self, scan: super::broker::Scan) -> Result<Self::Read> {
        source::Read::open(self.clone(), scan).await
    }

    async fn publisher(&self, _format: Format) -> Result<Self::Publisher> {
        Ok(sink::Publisher::new(self.clone(), self.jetstream().await?))
    }

    fn describe(&self) -> String {
        format!("subject={}", self.subject)
    }
}

impl Nats {
    /// A JetStream context on a new connection.
    async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .max_reconnects(Some(5));
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            options = options.user_and_password(u.clone(), p.expose().to_string());
        }
        if let Some(t) = &self.token {
            options = options.token(t.expose().to_string());
        }
        let connect = options.connect(self.server.as_str());
        let client = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| self.site.unreachable("timed out after 15 s"))?
            .map_err(|e| self.site.unreachable(e))?;
        Ok(async_nats::jetstream::new(client))
    }

    /// The stream holding the table's subject.
    async fn stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<async_nats::jetstream::stream::Stream> {
        let name = match &self.stream {
            Some(s) => s.clone(),
            None => js.stream_by_subject(self.subject.clone()).await.map_err(|e| {
                self.site.fail(
                    crate::error::ErrorKind::NotFound,
                    &format!("no JetStream stream holds subject `{}`", self.subject),
                    format!("{e}; create one (nats stream add) or name it with OPTIONS ('stream' '...')"),
                )
            })?,
        };
        js.get_stream(&name)
            .await
            .map_err(|e| self.site.err(&format!("stream `{name}`"), e))
    }
}
