//! What the server is doing and has done, as system tables: `system.queries` (recent
//! statements: running, finished and refused), `system.sessions` (client connections seen,
//! by user and address) and `system.metrics` (the `/metrics` exposition as rows). They live in
//! the `system` schema, which the policy opens to admins only (or roles granted `system`), as
//! they show every user's activity.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{
    Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result;
use engine::system::{SystemRows, register_system_table};

use crate::state::ServerState;

/// Statements `system.queries` remembers (oldest dropped first).
const QUERY_HISTORY: usize = 1000;
/// Connections `system.sessions` remembers; those idle longest are dropped first.
const MAX_SESSIONS: usize = 10_000;
/// A connection idle this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

/// Who ran a statement and from where.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) user: String,
    pub(crate) tenant: Option<String>,
    pub(crate) client: String,
    /// The request's OpenTelemetry trace id.
    pub(crate) trace_id: Option<String>,
}

impl Origin {
    /// The origin an audit record names, in the trace `trace_id`.
    pub(crate) fn of_record(
        record: &engine::security::AuditRecord,
        trace_id: Option<String>,
    ) -> Self {
        Self {
            user: record.user.clone(),
            tenant: record.tenant.clone(),
            client: record.client.clone(),
            trace_id,
        }
    }

    /// The origin of an authenticated call, in the current span's trace.
    pub(crate) fn of_caller(who: &crate::auth::Caller) -> Self {
        Self {
            user: who.principal.name.clone(),
            tenant: who.principal.tenant.as_ref().map(|t| t.tenant.clone()),
            client: who.client.clone(),
            trace_id: crate::trace::trace_id(&tracing::Span::current()),
        }
    }
}

#[derive(Debug, Clone)]
struct QueryEntry {
    id: String,
    origin: Origin,
    kind: &'static str,
    sql: String,
    status: String,
    started: SystemTime,
    duration_ms: Option<u64>,
    rows: u64,
    bytes: u64,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct SessionEntry {
    tenant: Option<String>,
    first_seen: SystemTime,
    last_seen: SystemTime,
    calls: u64,
    queries: u64,
}

/// Recent statements and connections; cheap to update on every call.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    queries: Mutex<VecDeque<QueryEntry>>,
    /// (user, client address) -> connection.
    sessions: Mutex<HashMap<(String, String), SessionEntry>>,
}

impl Activity {
    fn queries(&self) -> std::sync::MutexGuard<'_, VecDeque<QueryEntry>> {
        // Single pushes and field updates: a poisoned lock leaves nothing half-done.
        self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An authenticated call from `user` at `client`.
    pub(crate) fn seen(&self, user: &str, tenant: Option<&str>, client: &str) {
        let now = SystemTime::now();
        let mut sessions = self.sessions();
        if let Some(s) = sessions.get_mut(&(user.to_string(), client.to_string())) {
            s.last_seen = now;
            s.calls += 1;
            return;
        }
        sessions.retain(|_, s| {
            now.duration_since(s.last_seen)
                .is_ok_and(|idle| idle < SESSION_IDLE)
        });
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            (user.to_string(), client.to_string()),
            SessionEntry {
                tenant: tenant.map(str::to_string),
                first_seen: now,
                last_seen: now,
                calls: 1,
                queries: 0,
            },
        );
    }

    fn push(&self, entry: QueryEntry) {
        if let Some(s) = self
            .sessions()
            .get_mut(&(entry.origin.user.clone(), entry.origin.client.clone()))
        {
            s.queries += 1;
        }
        let mut queries = self.queries();
        if queries.len() >= QUERY_HISTORY {
            queries.pop_front();
        }
        queries.push_back(entry);
    }

    /// A statement started executing.
    pub(crate) fn started(&self, id: &str, origin: Origin, kind: &'static str, sql: &str) {
        self.push(QueryEntry {
            id: id.to_string(),
            origin,
            kind,
            // Secret-looking option values and URL passwords never reach `system.queries`.
            sql: engine::security::audit::redact(sql, false),
            status: "running".into(),
            started: SystemTime::now(),
            duration_ms: None,
            rows: 0,
            bytes: 0,
            error: None,
        });
    }

    /// A started statement ended with `status` (`ok`, `error`, `cancelled`, ...).
    pub(crate) fn finished(
        &self,
        id: &str,
        status: &str,
        rows: u64,
        bytes: u64,
        error: Option<&str>,
    ) {
        let mut queries = self.queries();
        if let Some(q) = queries.iter_mut().rev().find(|q| q.id == id) {
            q.status = status.to_string();
            q.duration_ms = Some(elapsed_ms(q.started));
            q.rows = rows;
            q.bytes = bytes;
            q.error = error.map(str::to_string);
        }
    }

    /// A statement refused or failed before it could execute.
    pub(crate) fn refused(
        &self,
        origin: Origin,
        kind: &'static str,
        sql: &str,
        status: &str,
        elapsed: Duration,
        error: &str,
    ) {
        let started = SystemTime::now().checked_sub(elapsed).unwrap_or(UNIX_EPOCH);
        self.push(QueryEntry {
            id: uuid::Uuid::new_v4().simple().to_string(),
            origin,
            kind,
            // Secret-looking option values and URL passwords never reach `system.queries`.
            sql: engine::security::audit::redact(sql, false),
            status: status.to_string(),
            started,
            duration_ms: Some(elapsed.as_millis() as u64),
            rows: 0,
            bytes: 0,
            error: Some(error.to_string()),
        });
    }

    fn queries_batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let queries: Vec<QueryEntry> = self.queries().iter().cloned().collect();
        let mut id = StringBuilder::new();
        let mut user = StringBuilder::new();
        let mut tenant = StringBuilder::new();
        let mut client = StringBuilder::new();
        let mut kind = StringBuilder::new();
        let mut status = StringBuilder::new();
        let mut sql = StringBuilder::new();
        let mut started = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut duration = UInt64Builder::new();
        let mut rows = UInt64Builder::new();
        let mut bytes = UInt64Builder::new();
        let mut error = StringBuilder::new();
        let mut trace = StringBuilder::new();
        for q in &queries {
            id.append_value(&q.id);
            user.append_value(&q.origin.user);
            tenant.append_option(q.origin.tenant.as_deref());
            client.append_value(&q.origin.client);
            kind.append_value(q.kind);
            status.append_value(&q.status);
            sql.append_value(&q.sql);
            started.append_value(epoch_ms(q.started));
            // A running statement shows how long it has run so far.
            duration.append_value(q.duration_ms.unwrap_or_else(|| elapsed_ms(q.started)));
            rows.append_value(q.rows);
            bytes.append_value(q.bytes);
            error.append_option(q.error.as_deref());
            trace.append_option(q.origin.trace_id.as_deref());
        }
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(id.finish()),
                Arc::new(user.finish()),
                Arc::new(tenant.finish()),
                Arc::new(client.finish()),
                Arc::new(kind.finish()),
                Arc::new(status.finish()),
                Arc::new(sql.finish()),
                Arc::new(started.finish()),
                Arc::new(duration.finish()),
                Arc::new(rows.finish()),
                Arc::new(bytes.finish()),
                Arc::new(error.finish()),
                Arc::new(trace.finish()),
            ],
        )?)
    }

    fn sessions_batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let running: HashMap<(String, String), u64> = self
            .queries()
            .iter()
            .filter(|q| q.status == "running")
            .fold(HashMap::new(), |mut m, q| {
                *m.entry((q.origin.user.clone(), q.origin.client.clone()))
                    .or_default() += 1;
                m
            });
        let mut sessions: Vec<((String, String), SessionEntry)> = self
            .sessions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sessions.sort_by_key(|(_, s)| s.first_seen);
        let mut user = StringBuilder::new();
        let mut tenant = StringBuilder::new();
        let mut client = StringBuilder::new();
        let mut first = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut last = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut calls = UInt64Builder::new();
        let mut queries = UInt64Builder::new();
        let mut active = UInt64Builder::new();
        for ((u, c), s) in &sessions {
            user.append_value(u);
            tenant.append_option(s.tenant.as_deref());
            client.append_value(c);
            first.append_value(epoch_ms(s.first_seen));
            last.append_value(epoch_ms(s.last_seen));
            calls.append_value(s.calls);
            queries.append_value(s.queries);
            active.append_value(
                running
                    .get(&(u.clone(), c.clone()))
                    .copied()
                    .unwrap_or_default(),
            );
        }
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(user.finish()),
                Arc::new(tenant.finish()),
                Arc::new(client.finish()),
                Arc::new(first.finish()),
                Arc::new(last.finish()),
                Arc::new(calls.finish()),
                Arc::new(queries.finish()),
                Arc::new(active.finish()),
            ],
        )?)
    }
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn elapsed_ms(since: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(since)
        .map_or(0, |d| d.as_millis() as u64)
}

fn timestamp(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}

/// Which of the server's tables a [`ServerTable`] shows.
#[derive(Debug, Clone, Copy)]
enum Which {
    Queries,
    Sessions,
    Metrics,
}

/// `system.queries`, `system.sessions` or `system.metrics` of one server. Holds the server
/// weakly: the server's engine holds the table.
#[derive(Debug)]
struct ServerTable {
    which: Which,
    server: Weak<ServerState>,
    schema: SchemaRef,
}

impl ServerTable {
    fn new(which: Which, server: Weak<ServerState>) -> Self {
        let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
        let count = |name: &str| Field::new(name, DataType::UInt64, false);
        let fields = match which {
            Which::Queries => vec![
                text("query_id", false),
                text("user", false),
                text("tenant", true),
                text("client", false),
                text("kind", false),
                text("status", false),
                text("sql", false),
                timestamp("started_at"),
                count("duration_ms"),
                count("rows"),
                count("bytes"),
                text("error", true),
                text("trace_id", true),
            ],
            Which::Sessions => vec![
                text("user", false),
                text("tenant", true),
                text("client", false),
                timestamp("connected_at"),
                timestamp("last_seen"),
                count("calls"),
                count("queries"),
                count("running"),
            ],
            Which::Metrics => vec![
                text("name", false),
                text("labels", false),
                Field::new("value", DataType::Float64, false),
            ],
        };
        Self {
            which,
            server,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

#[async_trait]
impl SystemRows for ServerTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, _session: &dyn Session) -> Result<Vec<RecordBatch>> {
        let Some(server) = self.server.upgrade() else {
            return Ok(Vec::new());
        };
        let batch = match self.which {
            Which::Queries => server.activity.queries_batch(&self.schema)?,
            Which::Sessions => server.activity.sessions_batch(&self.schema)?,
            Which::Metrics => metrics_batch(&server.metrics_text(), &self.schema)?,
        };
        Ok(vec![batch])
    }
}

/// The OpenMetrics exposition as `(name, labels, value)` rows; comments are skipped.
fn metrics_batch(text: &str, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut labels = StringBuilder::new();
    let mut value = Float64Builder::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, v) = match line.rfind('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => match line.split_once(' ') {
                Some((s, v)) => (s, v.trim()),
                None => continue,
            },
        };
        let Ok(v) = v.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        name.append_value(n);
        labels.append_value(l);
        value.append_value(v);
    }
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(name.finish()),
            Arc::new(labels.finish()),
            Arc::new(value.finish()),
        ],
    )?)
}

/// Register `system.queries`, `system.sessions` and `system.metrics` for `server`.
pub(crate) fn register(server: &Arc<ServerState>) -> Result<()> {
    let ctx = server.engine.context();
    for (name, which) in [
        ("queries", Which::Queries),
        ("sessions", Which::Sessions),
        ("metrics", Which::Metrics),
    ] {
        let table = ServerTable::new(which, Arc::downgrade(server));
        register_system_table(ctx, name, Arc::new(table))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(user: &str, client: &str) -> Origin {
        Origin {
            user: user.into(),
            tenant: None,
            client: client.into(),
            trace_id: None,
        }
    }

    #[test]
    fn queries_are_kept_newest_last_and_bounded() {
        let a = Activity::default();
        a.seen("ana", None, "1.2.3.4:5");
        for i in 0..QUERY_HISTORY + 5 {
            a.started(
                &format!("q{i}"),
                origin("ana", "1.2.3.4:5"),
                "query",
                "SELECT 1",
            );
        }
        a.finished("q1004", "ok", 7, 70, None);
        let table = ServerTable::new(Which::Queries, Weak::new());
        let batch = a.queries_batch(&table.schema).unwrap();
        assert_eq!(batch.num_rows(), QUERY_HISTORY);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(ids.value(0), "q5");
        assert_eq!(ids.value(QUERY_HISTORY - 1), "q1004");
        let sessions = ServerTable::new(Which::Sessions, Weak::new());
        let s = a.sessions_batch(&sessions.schema).unwrap();
        assert_eq!(s.num_rows(), 1);
        let running = s
            .column(7)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .unwrap();
        assert_eq!(running.value(0), (QUERY_HISTORY - 1) as u64);
    }

    #[test]
    fn metrics_text_becomes_rows() {
        let text = "# HELP x y\n# TYPE flowengine_queries counter\n\
                    flowengine_queries_total{kind=\"query\",status=\"ok\"} 3\n\
                    flowengine_active_queries 1\n# EOF\n";
        let table = ServerTable::new(Which::Metrics, Weak::new());
        let batch = metrics_batch(text, &table.schema).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let text_at = |c: usize, r: usize| {
            arrow::util::display::array_value_to_string(batch.column(c), r).unwrap()
        };
        assert_eq!(text_at(0, 0), "flowengine_queries_total");
        assert_eq!(text_at(1, 0), "kind=\"query\",status=\"ok\"");
        assert_eq!(text_at(2, 0), "3.0");
        assert_eq!(text_at(0, 1), "flowengine_active_queries");
        assert_eq!(text_at(1, 1), "");
    }
}
