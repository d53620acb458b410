//! Executing one client statement: admission, the engine, streaming out through a bounded
//! channel (so a slow client slows the query instead of growing memory), timeout,
//! cancellation, panic isolation, metrics and one log line per statement.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use engine::pipeline::{Prepared, Started};
use engine::security::AuditRecord;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

use crate::error::{datafusion_status, engine_status};
use crate::state::ServerState;

/// Batches in flight between the executing plan and the client, per query.
const CHANNEL_DEPTH: usize = 2;

/// The receiving end of a running statement.
pub(crate) struct QueryOutput {
    pub(crate) id: String,
    pub(crate) rx: mpsc::Receiver<Result<RecordBatch, Status>>,
    pub(crate) progress: Arc<Progress>,
}

/// What a poller can see of a running statement.
#[derive(Default)]
pub(crate) struct Progress {
    /// The first batch is available, or the statement has ended.
    pub(crate) ready: AtomicBool,
    physical: Mutex<Option<Arc<dyn ExecutionPlan>>>,
}

impl Progress {
    /// Fraction of input files done, when the plan reads files.
    pub(crate) fn fraction(&self) -> Option<f64> {
        if self.ready.load(Ordering::Acquire) {
            return Some(1.0);
        }
        let plan = self.physical.lock().ok()?.clone()?;
        let size = engine::progress::input_size(&plan);
        if size.files == 0 {
            return None;
        }
        let snap = engine::progress::snapshot(&plan);
        Some((snap.files_done as f64 / size.files as f64).min(0.99))
    }
}

/// Statement kinds in metrics and logs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Query,
    Update,
    Ingest,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Update => "update",
            Kind::Ingest => "ingest",
        }
    }
}

/// Start executing `plans` (one per parameter row) in a task of its own.
pub(crate) fn spawn_query(
    state: Arc<ServerState>,
    id: String,
    sql: String,
    kind: Kind,
    (engine, plans): (Arc<engine::Engine>, Vec<Prepared>),
    mut audit: AuditRecord,
) -> QueryOutput {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let progress = Arc::new(Progress::default());
    let token = state.shutdown.child_token();
    state.running.register(&id, token.clone(), &audit.user);
    // A child of the Flight call's span (the caller's trace when it sent a traceparent).
    let span = tracing::info_span!(
        target: "flowengine::flight",
        "query",
        query_id = %id,
        kind = kind.as_str(),
        user = %audit.user
    );
    let trace_id = crate::trace::trace_id(&span);
    audit.trace_id = trace_id.clone();
    let origin = crate::activity::Origin::of_record(&audit, trace_id.clone());
    state.activity.started(&id, origin, kind.as_str(), &sql);
    let task_progress = Arc::clone(&progress);
    let task_id = id.clone();
    tokio::spawn(
        async move {
            let started = Instant::now();
            let mut counts = Counts::default();
            let tenant = audit.tenant.clone();
            let run = run(
                &state,
                &engine,
                tenant.as_deref(),
                &plans,
                &tx,
                &task_progress,
                &mut counts,
            );
            let timeout = state.query_timeout();
            let outcome = tokio::select! {
                r = run => r,
                _ = token.cancelled() => Err(Status::cancelled("query cancelled")),
                _ = sleep_opt(timeout) => Err(Status::deadline_exceeded(format!(
                    "query exceeded the server's query timeout of {}s",
                    timeout.map(|t| t.as_secs()).unwrap_or_default()
                ))),
            };
            if counts.admitted {
                state.metrics.active.dec();
            }
            state.running.unregister(&task_id);
            let status = match &outcome {
                Ok(()) => "ok",
                Err(s) => match s.code() {
                    tonic::Code::Cancelled => "cancelled",
                    tonic::Code::DeadlineExceeded => "timeout",
                    tonic::Code::ResourceExhausted if !counts.admitted => "rejected",
                    _ => "error",
                },
            };
            let seconds = started.elapsed().as_secs_f64();
            state.metrics.record(kind.as_str(), status, seconds);
            let error = outcome.as_ref().err().map(|s| s.message().to_string());
            tracing::info!(
                target: "flowengine::query",
                query_id = %task_id,
                kind = kind.as_str(),
                status,
                rows = counts.rows,
                bytes = counts.bytes,
                duration_ms = (seconds * 1000.0).round() as u64,
                sql = %truncate(&engine::security::audit::redact(&sql, false), 500),
                error = error.as_deref().unwrap_or(""),
                trace_id = trace_id.as_deref().unwrap_or(""),
                "statement finished"
            );
            state.activity.finished(
                &task_id,
                status,
                counts.rows,
                counts.bytes,
                error.as_deref(),
            );
            audit.query_id = Some(task_id.clone());
            audit.rows = Some(counts.rows);
            audit.bytes = Some(counts.bytes);
            audit.duration_ms = Some((seconds * 1000.0).round() as u64);
            audit.error = error;
            state.audit.record(audit);
            if let Err(status) = outcome {
                // The client may be gone already; nothing else to tell.
                let _ = tx.send(Err(status)).await;
            }
            task_progress.ready.store(true, Ordering::Release);
        }
        .instrument(span),
    );
    QueryOutput { id, rx, progress }
}

#[derive(Default)]
struct Counts {
    admitted: bool,
    rows: u64,
    bytes: u64,
}

async fn run(
    state: &Arc<ServerState>,
    engine: &engine::Engine,
    tenant: Option<&str>,
    plans: &[Prepared],
    tx: &mpsc::Sender<Result<RecordBatch, Status>>,
    progress: &Progress,
    counts: &mut Counts,
) -> Result<(), Status> {
    let _permit = state
        .admission
        .admit(&state.metrics, state.query_timeout())
        .await?;
    let _tenant_permit = state.admit_tenant(tenant, state.query_timeout()).await?;
    counts.admitted = true;
    state.metrics.active.inc();
    let message_bytes = state.config.flight_data_size.as_u64() as usize;
    for prepared in plans {
        let started = AssertUnwindSafe(engine.start(prepared, None))
            .catch_unwind()
            .await
            .map_err(panic_status)?
            .map_err(engine_status)?;
        let Started::Running(mut exec) = started else {
            continue;
        };
        if let Ok(mut p) = progress.physical.lock() {
            *p = Some(Arc::clone(&exec.physical));
        }
        loop {
            let next = AssertUnwindSafe(exec.stream.next()).catch_unwind().await;
            let batch = match next {
                Ok(None) => break,
                Ok(Some(Ok(batch))) => batch,
                Ok(Some(Err(e))) => {
                    exec.abort().await;
                    return Err(datafusion_status(&e));
                }
                Err(panic) => {
                    exec.abort().await;
                    return Err(panic_status(panic));
                }
            };
            for (batch, bytes) in crate::split::for_messages(batch, message_bytes) {
                counts.rows += batch.num_rows() as u64;
                let bytes = bytes as u64;
                counts.bytes += bytes;
                state.metrics.rows_streamed.inc_by(batch.num_rows() as u64);
                state.metrics.bytes_streamed.inc_by(bytes);
                progress.ready.store(true, Ordering::Release);
                if tx.send(Ok(batch)).await.is_err() {
                    exec.abort().await;
                    return Err(Status::cancelled("client went away"));
                }
            }
        }
        exec.finish(None).await.map_err(engine_status)?;
    }
    Ok(())
}

async fn sleep_opt(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Count and log a statement that failed before it could execute (parse, plan, binding).
pub(crate) fn record_failure(
    state: &ServerState,
    who: &crate::auth::Caller,
    kind: Kind,
    sql: &str,
    status: &Status,
    elapsed: std::time::Duration,
) {
    let outcome = match status.code() {
        tonic::Code::PermissionDenied => "denied",
        _ => "error",
    };
    state
        .metrics
        .record(kind.as_str(), outcome, elapsed.as_secs_f64());
    let origin = crate::activity::Origin::of_caller(who);
    state.activity.refused(
        origin,
        kind.as_str(),
        sql,
        outcome,
        elapsed,
        status.message(),
    );
    tracing::info!(
        target: "flowengine::query",
        kind = kind.as_str(),
        status = outcome,
        rows = 0u64,
        bytes = 0u64,
        duration_ms = elapsed.as_millis() as u64,
        sql = %truncate(&engine::security::audit::redact(sql, false), 500),
        error = status.message(),
        "statement failed before execution"
    );
}

/// A panic inside planning or execution becomes an `INTERNAL` error for that one query.
pub(crate) fn panic_status(panic: Box<dyn std::any::Any + Send>) -> Status {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(target: "flowengine::query", panic = message, "a query panicked; the server continues");
    Status::internal(format!(
        "internal error while executing the query: {message}"
    ))
}

/// An already computed result as a statement output.
pub(crate) fn ready_output(id: String, batches: Vec<RecordBatch>) -> QueryOutput {
    let (tx, rx) = mpsc::channel(batches.len().max(1));
    for batch in batches {
        // Capacity covers every batch, so this cannot fail.
        let _ = tx.try_send(Ok(batch));
    }
    let progress = Arc::new(Progress::default());
    progress.ready.store(true, Ordering::Release);
    QueryOutput { id, rx, progress }
}

/// Drain a statement's output into memory (updates: the result is a row count).
pub(crate) async fn collect(mut output: QueryOutput) -> Result<Vec<RecordBatch>, Status> {
    let mut batches = Vec::new();
    while let Some(item) = output.rx.recv().await {
        batches.push(item?);
    }
    Ok(batches)
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
