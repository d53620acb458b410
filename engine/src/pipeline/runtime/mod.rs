//! The pipeline runtime: running a pipeline file as one recorded run, or continuously in
//! micro-batches ([`follow`]). Every program that runs pipelines (`flowengine run`, `serve
//! --follow`, later the scheduler) drives this, and learns what happens through a
//! [`RunObserver`].
//!
//! A run executes its statements in order in one session and stops at the first failure. It is
//! recorded in the state store with each step ([`record`]); `--resume` continues the last failed
//! run of the same, unchanged file without repeating the writes it committed. Incremental views'
//! high marks become watermarks, and the messages consuming queue scans read are acknowledged,
//! only after every sink committed. `CREATE CHECK`s followed by a write are evaluated inside that
//! write's scan when they can be ([`crate::pipeline::fused_checks`]).

pub mod follow;
mod liveness;
pub mod observer;
mod record;
pub mod statement;

use std::path::PathBuf;
use std::time::Instant;

use crate::Engine;
use crate::connector::ConnectorRegistry;
use crate::error::{EngineError, Result};
use crate::pipeline::quality::Check;
use crate::pipeline::{DryRun, Pipeline, PipelineStatement, fused_checks, quality};
use crate::state::{self, RunRecord, RunStatus, StepRecord, StepStatus};

pub use observer::{Interrupt, RowSink, RunObserver, Silent, StatementSummary};
use record::{Deferred, Recorder, ResumePoint};
pub use statement::{DeferredCheck, Rows, RunContext, StatementOptions, StepReport, run_statement};

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// `${NAME}` values; names not given here come from the environment.
    pub vars: Vec<(String, String)>,
    /// Plan every statement; run only DDL (see [`DryRun`]). Not recorded.
    pub dry_run: bool,
    /// Report each statement's plans before it runs.
    pub explain: bool,
    /// Continue the last failed run of this (unchanged) file.
    pub resume: bool,
    /// Write the trailing query's result to this file instead of showing it.
    pub output: Option<String>,
    /// Report a summary per statement (and progress displays).
    pub summaries: bool,
}

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    /// Interrupted: the running statement was cancelled and nothing it wrote was committed.
    Interrupted,
}

/// What one run did, for `--follow`'s pacing and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Batch {
    /// The run read something new (otherwise it was an idle poll, not recorded).
    pub advanced: bool,
    /// Messages of consuming queue tables acknowledged after the run committed.
    pub acknowledged: u64,
    /// Rows its writes (`COPY`, `INSERT`, `CREATE TABLE AS`) wrote.
    pub rows_written: u64,
    /// Bad records its readers skipped or dead-lettered.
    pub bad_records: u64,
    /// Messages its queue scans left in their sources (the lag behind them).
    pub backlog: u64,
}

/// Variable lookup: `vars` (the last value of a name wins), then the environment.
pub fn var_lookup(vars: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// The session's SQL dialect name (for splitting statements).
pub fn dialect(engine: &Engine) -> String {
    engine
        .context()
        .state()
        .config()
        .options()
        .sql_parser
        .dialect
        .to_string()
}

/// Run `request.pipeline` once in `engine`. With `follow` (one micro-batch of
/// [`follow::follow_until`]), a run whose incremental views found nothing new stops right after
/// the last of them and is not recorded (an idle poll).
pub async fn run_once(
    engine: &Engine,
    connectors: &ConnectorRegistry,
    request: &RunRequest,
    observer: &dyn RunObserver,
    follow: bool,
) -> Result<(RunEnd, Batch)> {
    let span = tracing::info_span!(
        target: "flowengine::pipeline",
        "pipeline",
        file = %request.pipeline.display(),
    );
    observer.run_started(&span, &request.pipeline);
    tracing::Instrument::instrument(
        run_traced(engine, connectors, request, observer, follow),
        span,
    )
    .await
}

async fn run_traced(
    engine: &Engine,
    connectors: &ConnectorRegistry,
    request: &RunRequest,
    observer: &dyn RunObserver,
    follow: bool,
) -> Result<(RunEnd, Batch)> {
    let mut interrupt = observer.interrupt();
    let acks = engine.acks();
    if !request.dry_run {
        // Consuming queue scans hold their acknowledgements until this run commits.
        acks.enable();
    }
    let pipeline = Pipeline::from_file(
        &request.pipeline,
        &var_lookup(&request.vars),
        &dialect(engine),
    )?;
    if pipeline.statements.is_empty() {
        return Err(EngineError::Usage(format!(
            "{} contains no SQL statements",
            pipeline.file
        )));
    }
    // A dry run changes nothing, so it is not recorded.
    let store = (!request.dry_run).then(|| state::open(engine.config()));
    let bytes = std::fs::read(&request.pipeline).map_err(|source| EngineError::ReadPipeline {
        path: request.pipeline.clone(),
        source,
    })?;
    let canonical = std::fs::canonicalize(&request.pipeline)
        .unwrap_or_else(|_| request.pipeline.clone())
        .display()
        .to_string();
    let hash = state::content_hash(&bytes);
    let resume = match (&store, request.resume) {
        (Some(store), true) => Some(record::resume_point(store.as_ref(), &canonical, &hash).await?),
        (None, true) => {
            return Err(EngineError::Usage(
                "--resume cannot be combined with --dry-run".into(),
            ));
        }
        _ => None,
    };
    if let Some(store) = &store {
        state::register_system_tables(engine.context(), store).await?;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let run_record = RunRecord {
        run_id: run_id.clone(),
        pipeline: canonical.clone(),
        content_hash: hash.clone(),
        variables: state::redact_variables(&request.vars),
        started_at: state::now(),
        finished_at: None,
        status: RunStatus::Running,
        error: None,
        resumed_from: resume.as_ref().map(|r| r.run_id.clone()),
    };
    // A micro-batch is recorded once it is known to read something (idle polls are not).
    let last_incremental = pipeline
        .statements
        .iter()
        .rposition(|s| crate::pipeline::incremental::parse(&s.sql).is_some())
        .filter(|_| follow);
    let consuming = pipeline
        .statements
        .iter()
        .any(|s| connectors.declares_consuming_table(&s.sql));
    if follow && last_incremental.is_none() && !consuming {
        return Err(EngineError::Usage(format!(
            "--follow needs a CREATE INCREMENTAL VIEW or a consuming queue table (RabbitMQ or \
             Redis stream) in {}: it is how each micro-batch knows what is new (without \
             one, every micro-batch would re-read everything)",
            pipeline.file
        )));
    }
    if let Some(store) = &store
        && !follow
    {
        store.begin_run(&run_record).await?;
        if let Some(r) = &resume {
            observer.notice(&format!(
                "resuming run {} of {}: {} committed write(s) will be skipped{}",
                r.run_id,
                pipeline.file,
                r.writes,
                match r.interrupted.len() {
                    0 => String::new(),
                    n => format!(", {n} interrupted commit(s) finished"),
                }
            ));
        }
    }
    let recorder = Recorder {
        store: store.clone(),
        run_id: run_id.clone(),
        pipeline: canonical.clone(),
        deferred: std::sync::Mutex::new(follow.then(|| Deferred::new(run_record.clone()))),
        observer,
    };
    let mut context = match &store {
        Some(store) => record::load_watermarks(store.as_ref(), &canonical, resume.as_ref()).await?,
        None => RunContext::default(),
    };
    let secrets = engine
        .context()
        .state()
        .config()
        .get_extension::<crate::SecretStore>()
        .map(|s| (*s).clone())
        .unwrap_or_else(crate::SecretStore::from_env);
    context.journal = store.clone().map(|s| (s, run_id.clone()));
    // This run's lock says it is alive; the runs whose locks are free are dead, and what they
    // staged and never committed is removed where this run writes.
    let locks = engine.config().effective_state_dir().join("locks");
    let _lock = match &store {
        Some(store) => {
            let lock = liveness::RunLock::acquire(&locks, &run_id)
                .map_err(|e| {
                    tracing::warn!(target: "flowengine::pipeline", "no run lock ({e}): this run's leftovers will not be cleaned up by later runs");
                })
                .ok();
            context.dead =
                Some(liveness::dead_runs(store.as_ref(), &canonical, &run_id, &locks).await?);
            lock
        }
        None => None,
    };
    context.lineage = crate::lineage::sink::LineageSink::from_config(
        engine.config(),
        &secrets,
        canonical.clone(),
    )?;
    let mut recorded_marks = 0;
    let mut rows_written = 0u64;
    let mut bad_records = 0u64;

    let total = pipeline.statements.len();
    let mut dry_run = request.dry_run.then(DryRun::new);
    // Checks waiting to be evaluated in the scan of the write that follows them.
    let mut deferred: Vec<DeferredCheck> = Vec::new();
    for (position, statement) in pipeline.statements.iter().enumerate() {
        let last = statement.index == total;
        if !request.dry_run
            && !request.explain
            && let Some(check) = deferrable(&pipeline.statements[position..], resume.as_ref())
        {
            if request.summaries {
                observer.notice(&format!(
                    "[{}/{}] {}  CHECK  {}: evaluated in the scan of the next write",
                    statement.index, total, statement.location, check.name
                ));
            }
            recorder
                .step_or_warn(step_record(
                    &run_id,
                    statement,
                    "CHECK".into(),
                    StepStatus::Succeeded,
                    None,
                    0,
                    None,
                    None,
                ))
                .await;
            deferred.push(DeferredCheck {
                statement: statement.clone(),
                check,
            });
            continue;
        }
        // A commit a killed run recorded but did not finish: finish it; the write is then
        // committed by that run and not executed again.
        let finished = match resume
            .as_ref()
            .and_then(|r| r.interrupted.get(&statement.index))
        {
            Some(commit) => {
                let runtime = engine.context().runtime_env();
                let done = crate::staging::roll_forward(
                    runtime.object_store_registry.as_ref(),
                    &commit.files,
                )
                .await
                .map_err(|e| {
                    EngineError::from(e.context(format!(
                        "finishing the commit run {} began for statement {} at {}",
                        commit.run_id, statement.index, statement.location
                    )))
                })?;
                observer.notice(&format!(
                    "[{}/{}] {}  finished the interrupted commit of run {}: {} file(s) renamed into place, {} already there",
                    statement.index,
                    total,
                    statement.location,
                    commit.run_id,
                    done.renamed,
                    done.already
                ));
                Some(commit.run_id.as_str())
            }
            None => None,
        };
        let committed_by = finished.or_else(|| {
            resume
                .as_ref()
                .and_then(|r| r.committed.get(&statement.index))
                .map(String::as_str)
        });
        let opts = StatementOptions {
            explain: request.explain,
            output: if last {
                request.output.as_deref()
            } else {
                None
            },
            rows: if last { Rows::Show } else { Rows::Count },
            summary: request.summaries,
            total,
            committed_by,
            run: Some(&context),
            deferred: &deferred,
            drop_empty_writes: follow,
        };
        let started = Instant::now();
        // An interrupt cancels the running statement: dropping it drops its staged writes, so
        // an interrupted sink leaves nothing behind.
        let result = tokio::select! {
            result = run_statement(engine, statement, observer, &opts, dry_run.as_mut()) => result,
            _ = &mut interrupt => {
                observer.notice(&format!(
                    "interrupted: statement {} at {} was cancelled; nothing it wrote was committed",
                    statement.index, statement.location
                ));
                acks.release_all().await;
                recorder.finish(RunStatus::Interrupted, Some("interrupted".into())).await;
                return Ok((RunEnd::Interrupted, Batch::default()));
            }
        };
        let elapsed = started.elapsed().as_millis() as u64;
        deferred.clear();
        let checks: Vec<_> =
            std::mem::take(&mut *context.checks.lock().unwrap_or_else(|p| p.into_inner()));
        for (check, outcome) in &checks {
            recorder.check(check, outcome).await;
        }
        match result {
            Ok(report) => {
                let wrote = writes(&statement.sql);
                bad_records += report.bad_records;
                if wrote && !report.skipped {
                    rows_written += report.rows.unwrap_or(0);
                }
                acks.statement_done(wrote).await;
                // The high marks incremental views read: pending until the run succeeds.
                let read = context
                    .read
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                for (view, range) in &read[recorded_marks..] {
                    recorder.watermark(view, range, false).await;
                }
                recorded_marks = read.len();
                let status = if report.skipped {
                    StepStatus::Skipped
                } else {
                    StepStatus::Succeeded
                };
                if wrote && !report.skipped {
                    crate::faults::point("step.before_record", statement.index);
                }
                let recorded = recorder
                    .step(step_record(
                        &run_id,
                        statement,
                        report.kind,
                        status,
                        report.rows,
                        elapsed,
                        None,
                        committed_by.map(String::from),
                    ))
                    .await;
                if let Err(e) = recorded {
                    // Unrecorded, a committed write would be written again by `--resume`.
                    acks.release_all().await;
                    let message = format!(
                        "statement {} at {} ran, but its step could not be recorded in {}: {e}",
                        statement.index,
                        statement.location,
                        store.as_ref().map(|s| s.location()).unwrap_or_default()
                    );
                    recorder
                        .finish(RunStatus::Failed, Some(message.clone()))
                        .await;
                    return Err(EngineError::Commit { run_id, message });
                }
                if wrote && !report.skipped {
                    crate::faults::point("step.after_record", statement.index);
                }
                if last_incremental == Some(position) {
                    let advanced = read.iter().any(|(_, r)| r.upto != r.after);
                    if !advanced && acks.staged_messages() == 0 {
                        acks.release_all().await;
                        recorder.discard();
                        return Ok((RunEnd::Succeeded, Batch::default()));
                    }
                    recorder.activate().await?;
                }
            }
            Err(e) => {
                acks.release_all().await;
                let message = e.to_string();
                recorder
                    .step_or_warn(step_record(
                        &run_id,
                        statement,
                        leading_keyword(&statement.sql),
                        StepStatus::Failed,
                        None,
                        elapsed,
                        Some(message.clone()),
                        None,
                    ))
                    .await;
                recorder.finish(RunStatus::Failed, Some(message)).await;
                if store.is_some() {
                    observer.notice(&format!(
                        "run {run_id} failed at statement {}; fix the cause and continue with: flowengine run --resume {}",
                        statement.index,
                        request.pipeline.display()
                    ));
                }
                return Err(e);
            }
        }
    }
    // Every sink committed: the high marks read become the watermarks of the next run.
    let read = context
        .read
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !request.dry_run {
        crate::faults::point("run.before_watermarks", 0);
        for (view, range) in &read {
            recorder.watermark(view, range, true).await;
        }
    }
    // ... and the messages consuming scans read are acknowledged: at-least-once (a crash
    // before this point delivers them again).
    let acked = match acks.commit().await {
        Ok(n) => n,
        Err(message) => {
            recorder
                .finish(RunStatus::Failed, Some(message.clone()))
                .await;
            return Err(EngineError::Commit { run_id, message });
        }
    };
    if follow && last_incremental.is_none() && acked == 0 {
        // An idle poll of a consuming pipeline: nothing read, nothing written.
        recorder.discard();
        return Ok((RunEnd::Succeeded, Batch::default()));
    }
    recorder.finish(RunStatus::Succeeded, None).await;
    Ok((
        RunEnd::Succeeded,
        Batch {
            advanced: true,
            acknowledged: acked,
            rows_written,
            bad_records,
            backlog: acks.backlog(),
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn step_record(
    run_id: &str,
    statement: &PipelineStatement,
    kind: String,
    status: StepStatus,
    rows: Option<u64>,
    duration_ms: u64,
    error: Option<String>,
    committed_by: Option<String>,
) -> StepRecord {
    StepRecord {
        run_id: run_id.to_string(),
        index: statement.index,
        line: statement.location.line,
        column: statement.location.column,
        kind,
        status,
        rows,
        duration_ms,
        error,
        finished_at: state::now(),
        committed_by,
    }
}

/// Whether `sql` writes, so the messages its scans consumed are acknowledged with the run:
/// `COPY`, `INSERT` and `CREATE [OR REPLACE] [TEMPORARY] TABLE ... AS`. A query, a view or a
/// check only looks: what it read goes back to the queue.
fn writes(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(6)
        .map(str::to_ascii_uppercase)
        .collect();
    match words.first().map(String::as_str) {
        Some("COPY" | "INSERT") => true,
        Some("CREATE") => words[1..]
            .iter()
            .take_while(|w| {
                matches!(
                    w.as_str(),
                    "OR" | "REPLACE" | "TEMPORARY" | "TEMP" | "TABLE"
                )
            })
            .any(|w| w == "TABLE"),
        _ => false,
    }
}

/// The check `statements[0]` declares, when it can be evaluated in the scan of a write: it and
/// any checks right after it are `EXPECT` checks ([`fused_checks::fusable`]), followed by an
/// `INSERT` or `COPY` that this run executes (not one a resumed run already committed).
fn deferrable(statements: &[PipelineStatement], resume: Option<&ResumePoint>) -> Option<Check> {
    let Some(Ok(first)) = quality::parse(&statements[0].sql) else {
        return None;
    };
    if !fused_checks::fusable(&first) {
        return None;
    }
    for next in &statements[1..] {
        match quality::parse(&next.sql) {
            Some(Ok(c)) if fused_checks::fusable(&c) => continue,
            Some(_) => return None,
            None => {}
        }
        let keyword = leading_keyword(&next.sql);
        let writes = keyword.starts_with("COPY ") || keyword.starts_with("INSERT ");
        let committed = resume.is_some_and(|r| r.committed.contains_key(&next.index));
        return (writes && !committed).then_some(first);
    }
    None
}

fn leading_keyword(sql: &str) -> String {
    sql.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_are_copy_insert_and_create_table() {
        for sql in [
            "COPY (SELECT 1) TO 'x.csv'",
            "insert into t select * from q",
            "CREATE TABLE t AS SELECT * FROM q",
            "CREATE OR REPLACE TABLE t AS SELECT 1",
        ] {
            assert!(super::writes(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM q LIMIT 10",
            "CREATE VIEW v AS SELECT * FROM q",
            "CREATE CHECK c ON q AS id IS NOT NULL",
            "CREATE INCREMENTAL VIEW v ON q BY id",
        ] {
            assert!(!super::writes(sql), "{sql}");
        }
    }
}
