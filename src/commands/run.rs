//! `flowengine run PIPELINE.sql`: every statement in order in one session; stop at the first
//! failure. Each run and step is recorded in the state store; `--resume` continues the last
//! failed run of the same (unchanged) file without repeating the writes it committed.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use engine::pipeline::Pipeline;
use engine::pipeline::incremental::{IncrementalRange, IncrementalView};
use engine::pipeline::quality::{Check, CheckOutcome, Severity};
use engine::state::{
    self, CheckRecord, RunRecord, RunStatus, StateStore, StepRecord, StepStatus, WatermarkRecord,
};

use crate::cli::{GlobalArgs, RunArgs};
use crate::exec::{DeferredCheck, Rows, RunContext, StatementOptions, run_statement};

pub(crate) async fn run(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    if args.follow {
        return super::follow::follow(global, args).await;
    }
    Ok(run_once(global, &args, false).await?.0)
}

/// What one run did, for `--follow`'s pacing and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Batch {
    /// The run read something new (otherwise it was an idle poll, not recorded).
    pub(crate) advanced: bool,
    /// Messages of consuming queue tables acknowledged after the run committed.
    pub(crate) acknowledged: u64,
    /// Rows its writes (`COPY`, `INSERT`, `CREATE TABLE AS`) wrote.
    pub(crate) rows_written: u64,
    /// Bad records its readers skipped or dead-lettered.
    pub(crate) bad_records: u64,
    /// Messages its queue scans left in their sources (the lag behind them).
    pub(crate) backlog: u64,
}

/// One run of the pipeline. With `follow`, a run whose incremental views found nothing new
/// stops right after the last of them and is not recorded (an idle poll).
pub(crate) async fn run_once(
    global: &GlobalArgs,
    args: &RunArgs,
    follow: bool,
) -> Result<(ExitCode, Batch)> {
    let span = tracing::info_span!(
        target: "flowengine::pipeline",
        "pipeline",
        file = %args.pipeline.display(),
    );
    if let Some(trace_id) = flight_server::trace::trace_id(&span) {
        tracing::info!(target: "flowengine::pipeline", trace_id, pipeline = %args.pipeline.display(), "pipeline run started");
    }
    tracing::Instrument::instrument(run_once_traced(global, args, follow), span).await
}

async fn run_once_traced(
    global: &GlobalArgs,
    args: &RunArgs,
    follow: bool,
) -> Result<(ExitCode, Batch)> {
    let (engine, loaded) = super::build_engine(global)?;
    let acks = engine.acks();
    if !args.dry_run {
        // Consuming queue scans hold their acknowledgements until this run commits.
        acks.enable();
    }
    let lookup = super::var_lookup(&args.vars);
    let pipeline = Pipeline::from_file(&args.pipeline, &lookup, &super::dialect(&engine))?;
    if pipeline.statements.is_empty() {
        return Err(
            crate::UsageError(format!("{} contains no SQL statements", pipeline.file)).into(),
        );
    }
    // A dry run changes nothing, so it is not recorded.
    let store = (!args.dry_run).then(|| state::open(&loaded.config));
    let bytes = std::fs::read(&args.pipeline)
        .with_context(|| format!("reading {}", args.pipeline.display()))?;
    let canonical = std::fs::canonicalize(&args.pipeline)
        .unwrap_or_else(|_| args.pipeline.clone())
        .display()
        .to_string();
    let hash = state::content_hash(&bytes);
    let resume = match (&store, args.resume) {
        (Some(store), true) => Some(resume_point(store.as_ref(), &canonical, &hash).await?),
        (None, true) => {
            return Err(
                crate::UsageError("--resume cannot be combined with --dry-run".into()).into(),
            );
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
        variables: state::redact_variables(&args.vars),
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
        .rposition(|s| engine::pipeline::incremental::parse(&s.sql).is_some())
        .filter(|_| follow);
    let registry = connectors::registry();
    let consuming = pipeline
        .statements
        .iter()
        .any(|s| registry.declares_consuming_table(&s.sql));
    if follow && last_incremental.is_none() && !consuming {
        return Err(crate::UsageError(format!(
            "--follow needs a CREATE INCREMENTAL VIEW or a consuming queue table (RabbitMQ or \
             Redis stream) in {}: it is how each micro-batch knows what is new (without \
             one, every micro-batch would re-read everything)",
            pipeline.file
        ))
        .into());
    }
    if let Some(store) = &store
        && !follow
    {
        store.begin_run(&run_record).await?;
        if let Some(r) = &resume {
            eprintln!(
                "resuming run {} of {}: {} committed write(s) will be skipped",
                r.run_id,
                pipeline.file,
                r.committed.len()
            );
        }
    }
    let recorder = Recorder {
        store: store.clone(),
        run_id: run_id.clone(),
        pipeline: canonical.clone(),
        deferred: std::sync::Mutex::new(follow.then(|| Deferred::new(run_record.clone()))),
    };
    let mut watermarks = match &store {
        Some(store) => load_watermarks(store.as_ref(), &canonical, resume.as_ref()).await?,
        None => RunContext::default(),
    };
    let secrets = engine
        .context()
        .state()
        .config()
        .get_extension::<engine::SecretStore>()
        .map(|s| (*s).clone())
        .unwrap_or_else(engine::SecretStore::from_env);
    watermarks.lineage = crate::lineage_sink::LineageSink::from_config(
        engine.config(),
        &secrets,
        canonical.clone(),
    )?;
    let mut recorded_marks = 0;
    let mut rows_written = 0u64;
    let mut bad_records = 0u64;

    let total = pipeline.statements.len();
    let mut dry_run = args.dry_run.then(engine::pipeline::DryRun::new);
    // Checks waiting to be evaluated in the scan of the write that follows them.
    let mut deferred: Vec<DeferredCheck> = Vec::new();
    for (position, statement) in pipeline.statements.iter().enumerate() {
        let last = statement.index == total;
        if !args.dry_run
            && !args.explain
            && let Some(check) = deferrable(&pipeline.statements[position..], resume.as_ref())
        {
            if !args.display.quiet {
                eprintln!(
                    "[{}/{}] {}  CHECK  {}: evaluated in the scan of the next write",
                    statement.index, total, statement.location, check.name
                );
            }
            recorder
                .step(StepRecord {
                    run_id: run_id.clone(),
                    index: statement.index,
                    line: statement.location.line,
                    column: statement.location.column,
                    kind: "CHECK".into(),
                    status: StepStatus::Succeeded,
                    rows: None,
                    duration_ms: 0,
                    error: None,
                    finished_at: state::now(),
                    committed_by: None,
                })
                .await;
            deferred.push(DeferredCheck {
                statement: statement.clone(),
                check,
            });
            continue;
        }
        let committed_by = resume
            .as_ref()
            .and_then(|r| r.committed.get(&statement.index))
            .map(String::as_str);
        let opts = StatementOptions {
            explain: args.explain,
            output: if last { args.output.as_deref() } else { None },
            rows: if last { Rows::Print } else { Rows::Count },
            summary: !args.display.quiet,
            total,
            committed_by,
            run: Some(&watermarks),
            deferred: &deferred,
            drop_empty_writes: follow,
        };
        let started = Instant::now();
        // Ctrl-C cancels the running statement: dropping it drops its staged writes, so an
        // interrupted sink leaves nothing behind.
        let result = tokio::select! {
            result = run_statement(&engine, statement, &args.display, &opts, dry_run.as_mut()) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!(
                    "interrupted: statement {} at {} was cancelled; nothing it wrote was committed",
                    statement.index, statement.location
                );
                acks.release_all().await;
                recorder.finish(RunStatus::Interrupted, Some("interrupted".into())).await;
                return Ok((ExitCode::from(130), Batch::default()));
            }
        };
        let elapsed = started.elapsed().as_millis() as u64;
        deferred.clear();
        let checks: Vec<_> =
            std::mem::take(&mut *watermarks.checks.lock().unwrap_or_else(|p| p.into_inner()));
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
                let read = watermarks
                    .read
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                for (view, range) in &read[recorded_marks..] {
                    recorder.watermark(view, range, false).await;
                }
                recorded_marks = read.len();
                recorder
                    .step(StepRecord {
                        run_id: run_id.clone(),
                        index: statement.index,
                        line: statement.location.line,
                        column: statement.location.column,
                        kind: report.kind,
                        status: if report.skipped {
                            StepStatus::Skipped
                        } else {
                            StepStatus::Succeeded
                        },
                        rows: report.rows,
                        duration_ms: elapsed,
                        error: None,
                        finished_at: state::now(),
                        committed_by: committed_by.map(String::from),
                    })
                    .await;
                if last_incremental == Some(position) {
                    let advanced = read.iter().any(|(_, r)| r.upto != r.after);
                    if !advanced && acks.staged_messages() == 0 {
                        acks.release_all().await;
                        recorder.discard();
                        return Ok((ExitCode::SUCCESS, Batch::default()));
                    }
                    recorder.activate().await?;
                }
            }
            Err(e) => {
                acks.release_all().await;
                let message = crate::render_error(&e);
                recorder
                    .step(StepRecord {
                        run_id: run_id.clone(),
                        index: statement.index,
                        line: statement.location.line,
                        column: statement.location.column,
                        kind: leading_keyword(&statement.sql),
                        status: StepStatus::Failed,
                        rows: None,
                        duration_ms: elapsed,
                        error: Some(message.clone()),
                        finished_at: state::now(),
                        committed_by: None,
                    })
                    .await;
                recorder.finish(RunStatus::Failed, Some(message)).await;
                if store.is_some() {
                    eprintln!(
                        "run {run_id} failed at statement {}; fix the cause and continue with: flowengine run --resume {}",
                        statement.index,
                        args.pipeline.display()
                    );
                }
                return Err(e);
            }
        }
    }
    // Every sink committed: the high marks read become the watermarks of the next run.
    let read = watermarks
        .read
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !args.dry_run {
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
            return Err(anyhow::anyhow!("run {run_id}: {message}"));
        }
    };
    if follow && last_incremental.is_none() && acked == 0 {
        // An idle poll of a consuming pipeline: nothing read, nothing written.
        recorder.discard();
        return Ok((ExitCode::SUCCESS, Batch::default()));
    }
    recorder.finish(RunStatus::Succeeded, None).await;
    Ok((
        ExitCode::SUCCESS,
        Batch {
            advanced: true,
            acknowledged: acked,
            rows_written,
            bad_records,
            backlog: acks.backlog(),
        },
    ))
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

/// The committed watermark of each incremental view of `pipeline`, and the high marks of the run
/// being resumed.
async fn load_watermarks(
    store: &dyn StateStore,
    pipeline: &str,
    resume: Option<&ResumePoint>,
) -> Result<RunContext> {
    let mut w = RunContext::default();
    for mark in store.watermarks(Some(pipeline)).await? {
        if mark.committed {
            w.committed.insert(mark.name.clone(), mark.value.clone());
        }
        if resume.is_some_and(|r| r.run_id == mark.run_id) && !mark.committed {
            w.resumed.insert(mark.name, mark.value);
        }
    }
    Ok(w)
}

/// Where a resumed run starts: the last failed run and the writes it (or the runs it resumed)
/// committed, by statement number.
struct ResumePoint {
    run_id: String,
    committed: HashMap<usize, String>,
}

async fn resume_point(store: &dyn StateStore, pipeline: &str, hash: &str) -> Result<ResumePoint> {
    let runs = store.runs(Some(pipeline)).await?;
    let Some(last) = runs.last() else {
        return Err(crate::UsageError(format!(
            "nothing to resume: {pipeline} has no recorded run in {}",
            store.location()
        ))
        .into());
    };
    match last.status {
        RunStatus::Failed | RunStatus::Interrupted => {}
        RunStatus::Succeeded => {
            return Err(crate::UsageError(format!(
                "nothing to resume: the last run of {pipeline} ({}) succeeded",
                last.run_id
            ))
            .into());
        }
        RunStatus::Running => {
            // A run killed without a chance to record its end counts as failed.
        }
    }
    if last.content_hash != hash {
        return Err(crate::UsageError(format!(
            "refusing to resume: {pipeline} changed since run {} (content hash {} -> {}); run it without --resume",
            last.run_id,
            &last.content_hash[..12.min(last.content_hash.len())],
            &hash[..12.min(hash.len())]
        ))
        .into());
    }
    let mut committed = HashMap::new();
    for step in store.steps(&last.run_id).await? {
        match step.status {
            StepStatus::Succeeded => {
                committed.insert(step.index, last.run_id.clone());
            }
            StepStatus::Skipped => {
                if let Some(by) = step.committed_by {
                    committed.insert(step.index, by);
                }
            }
            StepStatus::Failed => {}
        }
    }
    Ok(ResumePoint {
        run_id: last.run_id.clone(),
        committed,
    })
}

/// Writes run state; a state-store failure is reported but does not fail the pipeline's data work.
struct Recorder {
    store: Option<Arc<dyn StateStore>>,
    run_id: String,
    pipeline: String,
    /// A micro-batch's records held back until it is known to read something.
    deferred: std::sync::Mutex<Option<Deferred>>,
}

/// What a deferred run would have recorded so far.
struct Deferred {
    run: RunRecord,
    steps: Vec<StepRecord>,
    marks: Vec<WatermarkRecord>,
}

impl Deferred {
    fn new(run: RunRecord) -> Self {
        Self {
            run,
            steps: Vec::new(),
            marks: Vec::new(),
        }
    }
}

impl Recorder {
    fn take_deferred(&self) -> Option<Deferred> {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Forget a deferred run (an idle poll).
    fn discard(&self) {
        self.take_deferred();
    }

    /// Record a deferred run and what it held back; later records are written directly.
    async fn activate(&self) -> Result<()> {
        let (Some(store), Some(d)) = (&self.store, self.take_deferred()) else {
            return Ok(());
        };
        store.begin_run(&d.run).await?;
        for step in d.steps {
            self.step(step).await;
        }
        for mark in d.marks {
            if let Err(e) = store.record_watermark(&mark).await {
                eprintln!(
                    "warning: could not record the watermark of {}: {e}",
                    mark.name
                );
            }
        }
        Ok(())
    }

    async fn check(&self, check: &Check, outcome: &CheckOutcome) {
        if let Err(e) = self.activate().await {
            eprintln!("warning: could not record run {}: {e}", self.run_id);
        }
        if let Some(store) = &self.store {
            let record = CheckRecord {
                run_id: self.run_id.clone(),
                pipeline: self.pipeline.clone(),
                name: check.name.clone(),
                table: check.table.clone(),
                severity: match check.severity {
                    Severity::Warn => "warn",
                    Severity::Error => "error",
                }
                .into(),
                status: match (outcome.passed(), check.severity) {
                    (true, _) => "passed",
                    (false, Severity::Warn) => "warned",
                    (false, Severity::Error) => "failed",
                }
                .into(),
                failing_rows: outcome.failing_rows,
                sample: outcome.sample.clone(),
                duration_ms: outcome.duration_ms,
                recorded_at: state::now(),
            };
            if let Err(e) = store.record_check(&record).await {
                eprintln!("warning: could not record check {}: {e}", check.name);
            }
        }
    }

    async fn watermark(&self, view: &IncrementalView, range: &IncrementalRange, committed: bool) {
        if let Some(store) = &self.store {
            let record = WatermarkRecord {
                pipeline: self.pipeline.clone(),
                name: view.name.clone(),
                column: view.column.clone(),
                value: range.upto.clone(),
                run_id: self.run_id.clone(),
                committed,
                recorded_at: state::now(),
            };
            if let Some(d) = self
                .deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                d.marks.push(record);
                return;
            }
            if let Err(e) = store.record_watermark(&record).await {
                eprintln!(
                    "warning: could not record the watermark of {}: {e}",
                    view.name
                );
            }
        }
    }

    async fn step(&self, step: StepRecord) {
        if let Some(d) = self
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            d.steps.push(step);
            return;
        }
        if let Some(store) = &self.store
            && let Err(e) = store.record_step(&step).await
        {
            eprintln!("warning: could not record step {}: {e}", step.index);
        }
    }

    async fn finish(&self, status: RunStatus, error: Option<String>) {
        // A failed micro-batch is recorded even before it read anything.
        if let Err(e) = self.activate().await {
            eprintln!("warning: could not record run {}: {e}", self.run_id);
        }
        if let Some(store) = &self.store
            && let Err(e) = store.finish_run(&self.run_id, status, error).await
        {
            eprintln!(
                "warning: could not record the end of run {}: {e}",
                self.run_id
            );
        }
    }
}

/// The check `statements[0]` declares, when it can be evaluated in the scan of a write: it and
/// any checks right after it are `EXPECT` checks ([`fused_checks::fusable`]), followed by an
/// `INSERT` or `COPY` that this run executes (not one a resumed run already committed).
fn deferrable(
    statements: &[engine::pipeline::PipelineStatement],
    resume: Option<&ResumePoint>,
) -> Option<Check> {
    use engine::pipeline::{fused_checks, quality};
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
