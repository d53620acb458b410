//! Running one statement of a pipeline: plan, optionally explain, execute (with a progress
//! display the observer may draw), show or count the rows, commit writes, evaluate the checks
//! deferred into a write's scan, emit lineage, and report one summary per statement.
//! A panic inside DataFusion becomes an error for that statement, never a crash.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::{FutureExt, StreamExt};

use super::observer::{RunObserver, StatementSummary};
use crate::Engine;
use crate::error::{EngineError, Result};
use crate::lineage::sink::LineageSink;
use crate::pipeline::fused_checks::FusedChecks;
use crate::pipeline::incremental::{IncrementalRange, IncrementalView};
use crate::pipeline::quality::{Check, CheckOutcome, Severity};
use crate::pipeline::runner::{CommitLog, rows_affected};
use crate::pipeline::{
    Action, DryRun, Execution, PipelineStatement, Prepared, Started, StatementClass,
};
use crate::progress::group_digits as group;

/// What to do with the rows of a query statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Show them (through [`RunObserver::rows`]).
    Show,
    /// Only count them.
    Count,
}

/// How to run one statement.
#[derive(Debug, Clone, Copy)]
pub struct StatementOptions<'a> {
    pub explain: bool,
    /// Write this statement's query result to a file instead of showing it.
    pub output: Option<&'a str>,
    pub rows: Rows,
    /// Report a summary (and a progress display) for the statement.
    pub summary: bool,
    /// Number of statements in the run, for `[i/N]`.
    pub total: usize,
    /// `--resume`: this statement's write was committed by that earlier run; if it is a write,
    /// plan it (so the session matches) but do not execute it.
    pub committed_by: Option<&'a str>,
    /// The recorded run the statement belongs to (`flowengine run`); without one an incremental
    /// view shows every row and check results are not kept.
    pub run: Option<&'a RunContext>,
    /// Checks deferred into this statement's scan (see [`crate::pipeline::fused_checks`]).
    pub deferred: &'a [DeferredCheck],
    /// `--follow`: a write of no rows is rolled back instead of committed, so an idle
    /// micro-batch leaves no empty files behind.
    pub drop_empty_writes: bool,
}

impl<'a> StatementOptions<'a> {
    /// One statement of `total`, outside a recorded run.
    pub fn plain(total: usize, rows: Rows, summary: bool) -> Self {
        StatementOptions {
            explain: false,
            output: None,
            rows,
            summary,
            total,
            committed_by: None,
            run: None,
            deferred: &[],
            drop_empty_writes: false,
        }
    }
}

/// A `CREATE CHECK` whose evaluation was deferred into the scan of the write after it.
#[derive(Debug, Clone)]
pub struct DeferredCheck {
    pub statement: PipelineStatement,
    pub check: Check,
}

/// What a recorded run carries between statements: the watermarks it starts from, the ranges
/// its incremental views read, the results of its quality checks, and where lineage goes.
#[derive(Debug, Default)]
pub struct RunContext {
    /// Where OpenLineage events of the run's writes go (`lineage_file`, `lineage_url`).
    pub lineage: Option<LineageSink>,
    /// Quality check results not yet written to the state store.
    pub checks: std::sync::Mutex<Vec<(Check, CheckOutcome)>>,
    /// Last committed watermark per view.
    pub committed: std::collections::HashMap<String, Option<String>>,
    /// High marks of the failed run being resumed, per view.
    pub resumed: std::collections::HashMap<String, Option<String>>,
    /// What this run's incremental views read, in order.
    pub read: std::sync::Mutex<Vec<(IncrementalView, IncrementalRange)>>,
    /// Where this run records its commits of files before renaming them into place.
    pub journal: Option<(std::sync::Arc<dyn crate::state::StateStore>, String)>,
    /// Earlier runs of the pipeline that are provably dead: their staged leftovers are removed
    /// where this run writes.
    pub dead: Option<super::liveness::DeadRuns>,
}

/// What a statement did, for the run's state record.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub kind: String,
    /// Rows written or returned.
    pub rows: Option<u64>,
    /// Not executed because an earlier run committed it.
    pub skipped: bool,
    /// Bad input records skipped or dead-lettered by its tolerant readers.
    pub bad_records: u64,
}

/// Run one statement end to end. Errors carry the statement's location. With `dry_run`, the
/// statement is only planned (see [`DryRun`]).
pub async fn run_statement(
    engine: &Engine,
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<StepReport> {
    let started = Instant::now();
    let _ = engine.bad_records().take_counts();
    let span = tracing::info_span!(
        target: "flowengine::pipeline",
        "statement",
        index = statement.index,
        location = %statement.location,
    );
    let work = tracing::Instrument::instrument(
        run_inner(engine, statement, observer, opts, dry_run),
        span,
    );
    let outcome = AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(EngineError::Panicked {
                location: statement.location.clone(),
                index: statement.index,
                what: what.to_string(),
            })
        });
    let bad = engine.bad_records().take_counts();
    let bad_text = (!bad.is_empty()).then(|| bad.to_string());
    match outcome {
        Ok(report) => {
            if opts.summary {
                observer.statement_done(&StatementSummary {
                    statement,
                    total: opts.total,
                    kind: &report.kind,
                    detail: Some(&report.detail),
                    elapsed: started.elapsed(),
                    bad_records: bad_text,
                });
            }
            Ok(StepReport {
                kind: report.kind,
                rows: report.rows,
                skipped: report.skipped,
                bad_records: bad.skipped + bad.dead_lettered,
            })
        }
        Err(e) => {
            if opts.summary {
                observer.statement_done(&StatementSummary {
                    statement,
                    total: opts.total,
                    kind: "",
                    detail: None,
                    elapsed: started.elapsed(),
                    bad_records: bad_text,
                });
            }
            Err(e)
        }
    }
}

struct Report {
    kind: String,
    detail: String,
    rows: Option<u64>,
    skipped: bool,
}

async fn run_inner(
    engine: &Engine,
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    if !opts.deferred.is_empty() {
        return run_with_checks(engine, statement, observer, opts, dry_run).await;
    }
    run_plain(engine, statement, observer, opts, dry_run).await
}

/// [`run_planned`] without checks to fuse.
async fn run_plain(
    engine: &Engine,
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    match run_planned(engine, statement, observer, opts, dry_run, None).await? {
        Planned::Ran(report) => Ok(report),
        // Only a fused run can decline.
        Planned::NotFusable => Err(EngineError::Statement {
            location: statement.location.clone(),
            index: statement.index,
            kind: "statement".into(),
            source: Box::new(DataFusionError::Internal(
                "a statement without checks declined".into(),
            )),
        }),
    }
}

/// What [`run_planned`] did.
enum Planned {
    Ran(Report),
    /// The statement cannot carry the deferred checks; nothing was executed.
    NotFusable,
}

/// Run a write with the checks deferred into it evaluated in its scan; when its plan does not
/// allow that, run the checks on their own first, then the write.
async fn run_with_checks(
    engine: &Engine,
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    let checks: Vec<Check> = opts.deferred.iter().map(|d| d.check.clone()).collect();
    let fused = engine
        .observe_checks(&checks)
        .await
        .map_err(|e| EngineError::Statement {
            location: statement.location.clone(),
            index: statement.index,
            kind: "CHECK".into(),
            source: Box::new(DataFusionError::Context(
                "installing checks".into(),
                Box::new(e),
            )),
        })?;
    if let Some(fused) = fused {
        let planned = run_planned(engine, statement, observer, opts, None, Some(&fused)).await;
        let outcomes = fused.outcomes();
        fused.restore(engine)?;
        match planned {
            Ok(Planned::NotFusable) => {}
            Ok(Planned::Ran(report)) => {
                let outcomes = outcomes?;
                for (d, (_, outcome)) in opts.deferred.iter().zip(outcomes) {
                    match outcome {
                        Some(o) => report_check(&d.statement, observer, opts, &d.check, o)?,
                        // The scan did not run to its end (cannot happen for the plans
                        // accepted): check on its own rather than report nothing.
                        None => standalone_check(engine, d, observer, opts).await?,
                    }
                }
                return Ok(report);
            }
            Err(e) => {
                // A failing ERROR check stopped the write: report it as the check's failure.
                if let Ok(outcomes) = outcomes {
                    for (d, (_, outcome)) in opts.deferred.iter().zip(outcomes) {
                        if let Some(o) = outcome {
                            report_check(&d.statement, observer, opts, &d.check, o)?;
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    for d in opts.deferred {
        standalone_check(engine, d, observer, opts).await?;
    }
    run_plain(engine, statement, observer, opts, dry_run).await
}

/// Run a deferred check on its own, reporting its summary as its statement would.
async fn standalone_check(
    engine: &Engine,
    d: &DeferredCheck,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
) -> Result<()> {
    let started = Instant::now();
    let prepared = engine.prepare(&d.statement).await?;
    let report = quality_check(engine, &prepared, observer, opts, &d.check).await?;
    summarize(observer, &d.statement, opts, &report, started.elapsed());
    Ok(())
}

/// Plan and run `statement`; with `fused`, only when its plan lets the checks see every row
/// of their tables ([`Planned::NotFusable`] otherwise, before anything ran).
async fn run_planned(
    engine: &Engine,
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
    fused: Option<&FusedChecks>,
) -> Result<Planned> {
    let mut prepared = engine.prepare(statement).await?;
    match &prepared.action {
        Action::Sql => {}
        Action::IncrementalView(view) => {
            return Ok(Planned::Ran(
                incremental_view(engine, &prepared, opts, view).await?,
            ));
        }
        Action::Check(check) => {
            return Ok(Planned::Ran(
                quality_check(engine, &prepared, observer, opts, check).await?,
            ));
        }
    }
    if let Some(f) = fused
        && (prepared.class != StatementClass::Write
            || opts.committed_by.is_some()
            || opts.explain
            || !f.plan_is_fusable(&prepared.logical).unwrap_or(false))
    {
        return Ok(Planned::NotFusable);
    }
    if let Some(path) = opts.output {
        if prepared.class != StatementClass::Query {
            return Err(prepared.error(DataFusionError::Plan(format!(
                "--output needs the pipeline to end with a query, but its last statement is {}",
                prepared.kind
            ))));
        }
        prepared = engine.output_to_file(&prepared, path)?;
    }
    if opts.explain {
        let text = engine.explain(&prepared).await?;
        observer.explain(statement, &prepared.kind, &text);
    }
    let kind = prepared.kind.clone();
    if let Some(run) = opts.committed_by
        && prepared.class == StatementClass::Write
    {
        return Ok(Planned::Ran(Report {
            kind,
            detail: format!("skipped: committed by run {run}"),
            rows: None,
            skipped: true,
        }));
    }
    let executes = dry_run.is_none();
    let run_id = opts
        .run
        .and_then(|r| r.journal.as_ref())
        .map(|(_, id)| id.as_str());
    if executes
        && prepared.class == StatementClass::Write
        && let Some(dead) = opts.run.and_then(|r| r.dead.as_ref())
        && !dead.runs.is_empty()
    {
        let swept = engine
            .sweep_leftovers(&prepared, &|run| dead.runs.contains(run), &dead.keep)
            .await?;
        if swept.files > 0 {
            observer.notice(&format!(
                "[{}/{}] {}  removed {} staged file(s) ({} bytes) that dead runs left behind",
                statement.index,
                opts.total,
                statement.location,
                swept.files,
                group(swept.bytes)
            ));
        }
    }
    let (detail, rows) = match engine.start_in_run(&prepared, dry_run, run_id).await? {
        Started::Done => ("ok".to_string(), None),
        Started::Planned { .. } => ("planned (dry run)".to_string(), None),
        Started::Running(execution) => {
            if let Some(f) = fused
                && !f.each_scanned_once()
            {
                // Nothing was read or written yet: drop it and check on its own first.
                execution.abort().await;
                return Ok(Planned::NotFusable);
            }
            let (detail, rows) = drive(execution, &prepared, observer, opts).await?;
            (detail, Some(rows))
        }
    };
    if executes
        && let Some(sink) = opts.run.and_then(|r| r.lineage.as_ref())
        && let Some(l) = crate::lineage::of_plan(&prepared.logical)
    {
        sink.emit(statement.index, &l).await?;
    }
    Ok(Planned::Ran(Report {
        kind,
        detail,
        rows,
        skipped: false,
    }))
}

async fn drive(
    mut execution: Execution,
    prepared: &Prepared,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
) -> Result<(String, u64)> {
    let progress = opts.summary.then(|| {
        observer.executing(
            format!(
                "[{}/{}] {}",
                prepared.statement.index, opts.total, prepared.kind
            ),
            &execution.physical,
        )
    });
    let schema = execution.stream.schema();
    let showing = execution.class == StatementClass::Query && opts.rows == Rows::Show;
    let mut sink = if showing { observer.rows() } else { None };
    let mut counted: u64 = 0;
    let mut write_batches: Vec<RecordBatch> = Vec::new();
    let mut failure = None;
    while let Some(next) = execution.stream.next().await {
        match next {
            Ok(batch) => {
                if execution.class == StatementClass::Write {
                    write_batches.push(batch);
                } else if let Some(s) = sink.as_mut() {
                    if let Err(e) = s.push(&batch) {
                        failure = Some(EngineError::Output(e.to_string()));
                        break;
                    }
                } else {
                    counted += batch.num_rows() as u64;
                }
            }
            Err(e) => {
                failure = Some(prepared.error(e));
                break;
            }
        }
    }
    drop(progress);
    if let Some(e) = failure {
        execution.abort().await;
        return Err(e);
    }
    let is_write = execution.class == StatementClass::Write;
    if is_write && opts.drop_empty_writes && rows_affected(&write_batches) == Some(0) {
        execution.abort().await;
        return Ok(("no rows: nothing written".into(), 0));
    }
    let log = opts
        .run
        .and_then(|r| r.journal.as_ref())
        .map(|(store, run_id)| CommitLog {
            store: store.as_ref(),
            run_id,
            index: prepared.statement.index,
        });
    execution.finish(log).await?;
    if is_write {
        let n = rows_affected(&write_batches).unwrap_or(0);
        return Ok((format!("{} rows written", group(n)), n));
    }
    let rows = match sink {
        Some(s) => s
            .finish(RecordBatch::new_empty(schema))
            .map_err(|e| EngineError::Output(e.to_string()))?,
        None => counted,
    };
    Ok((format!("{} rows", group(rows)), rows))
}

async fn incremental_view(
    engine: &Engine,
    prepared: &Prepared,
    opts: &StatementOptions<'_>,
    view: &IncrementalView,
) -> Result<Report> {
    let (after, upto) = match opts.run {
        Some(w) => (
            w.committed.get(&view.name).cloned().flatten(),
            w.resumed.get(&view.name).cloned(),
        ),
        None => (None, None),
    };
    let range = engine
        .incremental_range(prepared, view, after, upto)
        .await?;
    let detail = format!(
        "{} by {}: after {} up to {}",
        view.source,
        view.column,
        range.after.as_deref().unwrap_or("the start"),
        range.upto.as_deref().unwrap_or("the start (no rows)")
    );
    if let Some(w) = opts.run {
        w.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((view.clone(), range));
    }
    Ok(Report {
        kind: prepared.kind.clone(),
        detail,
        rows: None,
        skipped: false,
    })
}

async fn quality_check(
    engine: &Engine,
    prepared: &Prepared,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    check: &Check,
) -> Result<Report> {
    let outcome = engine.check_outcome(prepared, check).await?;
    check_report(&prepared.statement, observer, opts, check, outcome)
}

/// Record a check's outcome in the run, report its summary (a deferred check's, whose own
/// statement ran inside another), and fail for a failing `ERROR` check.
fn report_check(
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    check: &Check,
    outcome: CheckOutcome,
) -> Result<()> {
    let duration = Duration::from_millis(outcome.duration_ms);
    let mut report = check_report(statement, observer, opts, check, outcome)?;
    report.detail.push_str(" (in the next write's scan)");
    summarize(observer, statement, opts, &report, duration);
    Ok(())
}

/// A check's outcome as its statement's report (or the error of a failing `ERROR` check),
/// recorded in the run.
fn check_report(
    statement: &PipelineStatement,
    observer: &dyn RunObserver,
    opts: &StatementOptions<'_>,
    check: &Check,
    outcome: CheckOutcome,
) -> Result<Report> {
    let kind = "CHECK";
    if let Some(run) = opts.run {
        run.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((check.clone(), outcome.clone()));
    }
    let on = check
        .table
        .as_deref()
        .map(|t| format!(" on {t}"))
        .unwrap_or_default();
    if outcome.passed() {
        return Ok(Report {
            kind: kind.into(),
            detail: format!("{}{on} passed", check.name),
            rows: Some(0),
            skipped: false,
        });
    }
    let n = outcome.failing_rows;
    match check.severity {
        Severity::Error => Err(EngineError::CheckFailed {
            location: statement.location.clone(),
            index: statement.index,
            message: outcome.failure(check),
        }),
        Severity::Warn => {
            observer.notice(&format!(
                "warning: check {}{on}: {} failing row(s). First rows:\n{}",
                check.name,
                group(n),
                outcome.sample.as_deref().unwrap_or("")
            ));
            Ok(Report {
                kind: kind.into(),
                detail: format!("{}{on} WARN {} failing row(s)", check.name, group(n)),
                rows: Some(n),
                skipped: false,
            })
        }
    }
}

fn summarize(
    observer: &dyn RunObserver,
    statement: &PipelineStatement,
    opts: &StatementOptions<'_>,
    report: &Report,
    elapsed: Duration,
) {
    if opts.summary {
        observer.statement_done(&StatementSummary {
            statement,
            total: opts.total,
            kind: &report.kind,
            detail: Some(&report.detail),
            elapsed,
            bad_records: None,
        });
    }
}
