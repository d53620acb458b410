//! A broker that keeps its queues in the session's memory (`STORED AS MEMORY_QUEUE`): the
//! smallest complete [`Broker`], shown in `docs/connectors/README.md`, and the tests of
//! everything the queue family shares (options, decoding, bad messages, publishing).

// docs:begin
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use engine::{ParamKind, ParamSpec, TableType};

use super::broker::{Broker, Definition, MessageRead, Outgoing, Publisher, Scan, Site};
use super::decode::Format;
use super::rows::{Message, MessageColumns};

/// One queue's messages.
type Messages = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// The session's queues, by name (a session config extension).
#[derive(Debug, Default)]
pub(crate) struct MemoryQueues(Mutex<HashMap<String, Messages>>);

/// One queue of the session.
#[derive(Debug, Clone)]
pub(crate) struct MemoryQueue {
    messages: Messages,
    site: Site,
}

#[async_trait]
impl Broker for MemoryQueue {
    const TABLE_TYPE: TableType = TableType::new("MEMORY_QUEUE");
    const LABEL: &'static str = "memory queue";
    const SCHEME: &'static str = "memory";
    const PATH: &'static str = "queue";
    const COLUMNS: MessageColumns =
        MessageColumns::new("_queue", "_position", "_timestamp", "_headers").offset_id();
    const DEFAULT_MAX_MESSAGES: Option<u64> = None;
    const PARAMS: &'static [ParamSpec] = &[ParamSpec {
        name: "capacity (MEMORY_QUEUE)",
        description: "refuse to publish past this many messages",
        kind: ParamKind::Plain,
    }];

    type Read = MemoryRead;
    type Publisher = MemoryPublisher;

    fn define(def: &mut Definition<'_>) -> Result<Self> {
        let queues = def.options.state().config().get_extension::<MemoryQueues>();
        let queues = queues.ok_or_else(|| def.error("this session keeps no memory queues"))?;
        let mut queues = queues.0.lock().map_err(|_| def.error("poisoned"))?;
        Ok(Self {
            messages: Arc::clone(queues.entry(def.path.to_string()).or_default()),
            site: def.site.clone(),
        })
    }

    async fn open_read(&self, scan: Scan) -> Result<MemoryRead> {
        Ok(MemoryRead {
            queue: self.clone(),
            left: scan.cap.unwrap_or(u64::MAX),
            position: 0,
        })
    }

    async fn publisher(&self, _format: Format) -> Result<MemoryPublisher> {
        Ok(MemoryPublisher {
            queue: self.clone(),
            sent: 0,
        })
    }

    fn describe(&self) -> String {
        self.site.url().to_string()
    }
}

/// A read that takes messages off the queue.
pub(crate) struct MemoryRead {
    queue: MemoryQueue,
    left: u64,
    position: u64,
}

#[async_trait]
impl MessageRead for MemoryRead {
    async fn next(&mut self, max: usize) -> Result<Vec<Message>> {
        let mut queue = self.queue.messages.lock().map_err(|_| poisoned())?;
        let mut messages = Vec::new();
        while messages.len() < max && self.left > 0 {
            let Some(payload) = queue.pop_front() else {
                break;
            };
            self.left -= 1;
            self.position += 1;
            messages.push(Message {
                payload,
                key: self.queue.site.url().to_string(),
                offset: self.position,
                ..Message::default()
            });
        }
        Ok(messages)
    }

    fn source(&self) -> String {
        self.queue.site.url().to_string()
    }
}

/// Publishing appends to the queue; nothing is in flight.
pub(crate) struct MemoryPublisher {
    queue: MemoryQueue,
    sent: u64,
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()> {
        let mut queue = self.queue.messages.lock().map_err(|_| poisoned())?;
        queue.push_back(message.payload);
        self.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<u64> {
        Ok(std::mem::take(&mut self.sent))
    }
}

fn poisoned() -> DataFusionError {
    DataFusionError::Internal("a memory queue's lock was poisoned".into())
}
// docs:end

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::super::broker::{Registered, Registration};
    use super::*;

    fn session() -> SessionContext {
        let config = SessionConfig::new().with_extension(Arc::new(MemoryQueues::default()));
        let mut builder = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        let registration: &dyn Registered = &Registration::<MemoryQueue>::LINE;
        builder
            .table_factories()
            .get_or_insert_with(Default::default)
            .insert("MEMORY_QUEUE".into(), registration.factory());
        SessionContext::new_with_state(builder.build())
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(pretty_format_batches(&batches)?.to_string())
    }

    #[tokio::test]
    async fn a_broker_is_only_its_protocol() {
        let ctx = session();
        run(
            &ctx,
            "CREATE EXTERNAL TABLE q (id BIGINT, name VARCHAR) STORED AS MEMORY_QUEUE \
             LOCATION 'memory://local/orders' OPTIONS ('on_error' 'skip')",
        )
        .await
        .unwrap();
        let inserted = run(&ctx, "INSERT INTO q (id, name) VALUES (1, 'a'), (2, 'b')")
            .await
            .unwrap();
        assert!(inserted.contains("| 2 "), "{inserted}");
        // A message that is not JSON of the declared columns goes to the error policy.
        run(
            &ctx,
            "CREATE EXTERNAL TABLE raw (payload VARCHAR) STORED AS MEMORY_QUEUE \
             LOCATION 'memory://local/orders' OPTIONS ('format' 'raw')",
        )
        .await
        .unwrap();
        run(&ctx, "INSERT INTO raw (payload) VALUES ('not json')")
            .await
            .unwrap();
        let rows = run(
            &ctx,
            "SELECT id, name, _queue, _position FROM q ORDER BY id",
        )
        .await
        .unwrap();
        assert_eq!(
            rows.lines()
                .filter(|l| l.contains("memory://local/orders"))
                .count(),
            2,
            "{rows}"
        );
        assert!(rows.contains("| 1  | a    |"), "{rows}");
        // The read took the messages.
        let again = run(&ctx, "SELECT count(*) AS n FROM q").await.unwrap();
        assert!(again.contains("| 0 |"), "{again}");
    }

    #[test]
    fn the_documented_broker_is_this_one() {
        let this = include_str!("memory.rs");
        let code = &this[this.find("// docs:begin\n").unwrap() + "// docs:begin\n".len()
            ..this.find("// docs:end\n").unwrap()];
        let docs = include_str!("../../../docs/connectors/README.md");
        assert!(
            docs.contains(&format!("```rust\n{code}```")),
            "docs/connectors/README.md must show connectors/src/queue/memory.rs as it is"
        );
    }

    #[tokio::test]
    async fn options_are_checked_against_the_declared_parameters() {
        let ctx = session();
        for (columns, location, options, expected) in [
            (
                "id BIGINT",
                "local/q",
                "'capacty' '3'",
                "unknown option(s): capacty;",
            ),
            (
                "id BIGINT",
                "local/q",
                "'max_messages' 'ten'",
                "option `max_messages` = `ten`",
            ),
            (
                "_queue VARCHAR",
                "local/q",
                "",
                "reserved for message metadata",
            ),
            (
                "id BIGINT",
                "u:pw@local/q",
                "",
                "put credentials in OPTIONS",
            ),
        ] {
            let options = if options.is_empty() {
                String::new()
            } else {
                format!(" OPTIONS ({options})")
            };
            let err = run(
                &ctx,
                &format!(
                    "CREATE EXTERNAL TABLE q ({columns}) STORED AS MEMORY_QUEUE \
                     LOCATION 'memory://{location}'{options}"
                ),
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("memory queue table `q`: ") && err.contains(expected),
                "{err}"
            );
        }
        // The error lists what the table takes.
        let err = run(
            &ctx,
            "CREATE EXTERNAL TABLE q (id BIGINT) STORED AS MEMORY_QUEUE \
             LOCATION 'memory://local/q' OPTIONS ('capacty' '3')",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("take batch_size, capacity, dead_letter_path"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_messages_fail_a_table_without_an_error_policy() {
        let ctx = session();
        for sql in [
            "CREATE EXTERNAL TABLE q (id BIGINT) STORED AS MEMORY_QUEUE LOCATION 'memory://l/q'",
            "CREATE EXTERNAL TABLE raw (p VARCHAR) STORED AS MEMORY_QUEUE \
             LOCATION 'memory://l/q' OPTIONS ('format' 'raw')",
            "INSERT INTO raw (p) VALUES ('{\"id\": 1}'), ('oops')",
        ] {
            run(&ctx, sql).await.unwrap();
        }
        let err = run(&ctx, "SELECT * FROM q").await.unwrap_err().to_string();
        assert!(
            err.contains("memory://l/q: bad message 2") && err.contains("on_error"),
            "{err}"
        );
    }
}
