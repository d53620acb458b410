//! Running statements for the CLI: plan, optionally explain, execute with progress, print or
//! count the rows, commit writes, and report one summary line per statement on stderr.
//! A panic inside DataFusion becomes an error for that statement, never a crash.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use datafusion::arrow::record_batch::RecordBatch;
use engine::Engine;
use engine::pipeline::incremental::{self, IncrementalRange, IncrementalView};
use engine::pipeline::quality::{self, Check, CheckOutcome, Severity};
use engine::pipeline::runner::rows_affected;
use engine::pipeline::{DryRun, PipelineStatement, Prepared, Started, StatementClass};
use futures::{FutureExt, StreamExt};

use crate::cli::DisplayArgs;
use crate::output::ResultPrinter;
use crate::progress::Progress;

/// What to do with the rows of a query statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Print them (to stdout, in the display format).
    Print,
    /// Only count them.
    Count,
}

/// Per-run settings.
pub(crate) struct StatementOptions<'a> {
    pub(crate) explain: bool,
    /// Write this statement's query result to a file instead of printing it.
    pub(crate) output: Option<&'a str>,
    pub(crate) rows: Rows,
    /// Print a summary line on stderr.
    pub(crate) summary: bool,
    /// Number of statements in the run, for `[i/N]`.
    pub(crate) total: usize,
    /// `--resume`: this statement's write was committed by that earlier run; if it is a write,
    /// plan it (so the session matches) but do not execute it.
    pub(crate) committed_by: Option<&'a str>,
    /// RunContext of the pipeline's incremental views (`flowengine run`); without them an
    /// incremental view shows every row.
    pub(crate) run: Option<&'a RunContext>,
    /// Checks deferred into this statement's scan (see `engine::pipeline::fused_checks`).
    pub(crate) deferred: &'a [DeferredCheck],
    /// `--follow`: a write of no rows is rolled back instead of committed, so an idle
    /// micro-batch leaves no empty files behind.
    pub(crate) drop_empty_writes: bool,
}

/// A `CREATE CHECK` whose evaluation was deferred into the scan of the write after it.
#[derive(Debug, Clone)]
pub(crate) struct DeferredCheck {
    pub(crate) statement: PipelineStatement,
    pub(crate) check: Check,
}

/// What a recorded run (`flowengine run`) carries between statements: the watermarks it starts
/// from, the ranges its incremental views read, and the results of its quality checks.
#[derive(Debug, Default)]
pub(crate) struct RunContext {
    /// Where OpenLineage events of the run's writes go (`lineage_file`, `lineage_url`).
    pub(crate) lineage: Option<crate::lineage_sink::LineageSink>,
    /// Quality check results not yet written to the state store.
    pub(crate) checks: std::sync::Mutex<Vec<(Check, CheckOutcome)>>,
    /// Last committed watermark per view.
    pub(crate) committed: std::collections::HashMap<String, Option<String>>,
    /// High marks of the failed run being resumed, per view.
    pub(crate) resumed: std::collections::HashMap<String, Option<String>>,
    /// What this run's incremental views read, in order.
    pub(crate) read: std::sync::Mutex<Vec<(IncrementalView, IncrementalRange)>>,
}

/// What a statement did, for the run's state record.
#[derive(Debug, Clone)]
pub(crate) struct StepReport {
    pub(crate) kind: String,
    /// Rows written or returned.
    pub(crate) rows: Option<u64>,
    /// Not executed because an earlier run committed it.
    pub(crate) skipped: bool,
    /// Bad input records skipped or dead-lettered by its tolerant readers.
    pub(crate) bad_records: u64,
}

/// Run one statement end to end. Errors carry the statement's location. With `dry_run`, the
/// statement is only planned (see [`DryRun`]).
pub(crate) async fn run_statement(
    engine: &Engine,
    statement: &PipelineStatement,
    display: &DisplayArgs,
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
    let work =
        tracing::Instrument::instrument(run_inner(engine, statement, display, opts, dry_run), span);
    let outcome = AssertUnwindSafe(work).catch_unwind().await.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(anyhow!(
            "{}: statement {} failed with an internal error ({what}); the input may be corrupt, or this is a bug to report",
            statement.location,
            statement.index
        ))
    });
    let bad = engine.bad_records().take_counts();
    match outcome {
        Ok(report) => {
            if opts.summary {
                let mut line = summary_line(statement, opts.total, &report, started.elapsed());
                if !bad.is_empty() {
                    line.push_str(&format!("  ({bad})"));
                }
                eprintln!("{line}");
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
                eprintln!(
                    "[{}/{}] {}  FAILED  {}",
                    statement.index,
                    opts.total,
                    statement.location,
                    fmt_duration(started.elapsed())
                );
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
    display: &DisplayArgs,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    if let Some(view) = incremental::parse(&statement.sql) {
        return incremental_view(engine, statement, opts, view).await;
    }
    if let Some(check) = quality::parse(&statement.sql) {
        return quality_check(engine, statement, opts, check).await;
    }
    if !opts.deferred.is_empty() {
        return run_with_checks(engine, statement, display, opts, dry_run).await;
    }
    run_plain(engine, statement, display, opts, dry_run).await
}

/// [`run_planned`] without checks to fuse.
async fn run_plain(
    engine: &Engine,
    statement: &PipelineStatement,
    display: &DisplayArgs,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    match run_planned(engine, statement, display, opts, dry_run, None).await? {
        Planned::Ran(report) => Ok(report),
        // Only a fused run can decline.
        Planned::NotFusable => Err(anyhow!("internal: a statement without checks declined")),
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
    display: &DisplayArgs,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
) -> Result<Report> {
    let checks: Vec<Check> = opts.deferred.iter().map(|d| d.check.clone()).collect();
    let fused = engine.observe_checks(&checks).await.map_err(|e| {
        anyhow!(
            "{}: statement {} failed: installing checks: {e}",
            statement.location,
            statement.index
        )
    })?;
    if let Some(fused) = fused {
        let planned = run_planned(engine, statement, display, opts, None, Some(&fused)).await;
        let outcomes = fused.outcomes();
        fused.restore(engine)?;
        match planned {
            Ok(Planned::NotFusable) => {}
            Ok(Planned::Ran(report)) => {
                let outcomes = outcomes?;
                for (d, (_, outcome)) in opts.deferred.iter().zip(outcomes) {
                    match outcome {
                        Some(o) => report_check(&d.statement, opts, &d.check, o)?,
                        // The scan did not run to its end (cannot happen for the plans
                        // accepted): check on its own rather than report nothing.
                        None => standalone_check(engine, d, opts).await?,
                    }
                }
                return Ok(report);
            }
            Err(e) => {
                // A failing ERROR check stopped the write: report it as the check's failure.
                if let Ok(outcomes) = outcomes {
                    for (d, (_, outcome)) in opts.deferred.iter().zip(outcomes) {
                        if let Some(o) = outcome {
                            report_check(&d.statement, opts, &d.check, o)?;
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    for d in opts.deferred {
        standalone_check(engine, d, opts).await?;
    }
    run_plain(engine, statement, display, opts, dry_run).await
}

/// Run a deferred check on its own, printing its summary line as its statement would.
async fn standalone_check(
    engine: &Engine,
    d: &DeferredCheck,
    opts: &StatementOptions<'_>,
) -> Result<()> {
    let started = Instant::now();
    let report = quality_check(engine, &d.statement, opts, Ok(d.check.clone())).await?;
    if opts.summary {
        eprintln!(
            "{}",
            summary_line(&d.statement, opts.total, &report, started.elapsed())
        );
    }
    Ok(())
}

/// Plan and run `statement`; with `fused`, only when its plan lets the checks see every row
/// of their tables ([`Planned::NotFusable`] otherwise, before anything ran).
async fn run_planned(
    engine: &Engine,
    statement: &PipelineStatement,
    display: &DisplayArgs,
    opts: &StatementOptions<'_>,
    dry_run: Option<&mut DryRun>,
    fused: Option<&engine::pipeline::fused_checks::FusedChecks>,
) -> Result<Planned> {
    let mut prepared = engine.prepare(statement).await?;
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
            return Err(prepared
                .error(datafusion::error::DataFusionError::Plan(format!(
                    "--output needs the pipeline to end with a query, but its last statement is {}",
                    prepared.kind
                )))
                .into());
        }
        prepared = engine.output_to_file(&prepared, path)?;
    }
    if opts.explain {
        let text = engine.explain(&prepared).await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "-- [{}] {} {}\n{text}",
            statement.index, statement.location, prepared.kind
        )?;
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
    let (detail, rows) = match engine.start(&prepared, dry_run).await? {
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
            let (detail, rows) = drive(execution, &prepared, display, opts).await?;
            (detail, Some(rows))
        }
    };
    if executes
        && let Some(sink) = opts.run.and_then(|r| r.lineage.as_ref())
        && let Some(l) = engine::lineage::of_plan(&prepared.logical)
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
    mut execution: engine::pipeline::Execution,
    prepared: &Prepared,
    display: &DisplayArgs,
    opts: &StatementOptions<'_>,
) -> Result<(String, u64)> {
    let progress = Progress::start(
        &execution.physical,
        format!(
            "[{}/{}] {}",
            prepared.statement.index, opts.total, prepared.kind
        ),
        opts.summary,
    );
    let schema = execution.stream.schema();
    let printing = execution.class == StatementClass::Query && opts.rows == Rows::Print;
    let mut printer = printing
        .then(|| ResultPrinter::new(std::io::stdout().lock(), display.format, display.max_rows));
    let mut counted: u64 = 0;
    let mut write_batches: Vec<RecordBatch> = Vec::new();
    let mut failure = None;
    while let Some(next) = execution.stream.next().await {
        match next {
            Ok(batch) => {
                if execution.class == StatementClass::Write {
                    write_batches.push(batch);
                } else if let Some(p) = printer.as_mut() {
                    if let Err(e) = p.push(&batch) {
                        failure = Some(e);
                        break;
                    }
                } else {
                    counted += batch.num_rows() as u64;
                }
            }
            Err(e) => {
                failure = Some(prepared.error(e).into());
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
    execution.finish().await?;
    if is_write {
        let n = rows_affected(&write_batches).unwrap_or(0);
        return Ok((format!("{} rows written", group(n)), n));
    }
    let rows = match printer {
        Some(p) => p.finish(Some(RecordBatch::new_empty(schema)))?,
        None => counted,
    };
    Ok((format!("{} rows", group(rows)), rows))
}

async fn incremental_view(
    engine: &Engine,
    statement: &PipelineStatement,
    opts: &StatementOptions<'_>,
    view: std::result::Result<IncrementalView, String>,
) -> Result<Report> {
    let kind = "CREATE INCREMENTAL VIEW";
    let fail = |m: String| {
        anyhow!(
            "{}: statement {} ({kind}) failed: {m}",
            statement.location,
            statement.index
        )
    };
    let view = view.map_err(fail)?;
    let (after, upto) = match opts.run {
        Some(w) => (
            w.committed.get(&view.name).cloned().flatten(),
            w.resumed.get(&view.name).cloned(),
        ),
        None => (None, None),
    };
    let range = engine
        .create_incremental_view(&view, after, upto)
        .await
        .map_err(|e| fail(e.to_string()))?;
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
            .push((view, range));
    }
    Ok(Report {
        kind: kind.into(),
        detail,
        rows: None,
        skipped: false,
    })
}

async fn quality_check(
    engine: &Engine,
    statement: &PipelineStatement,
    opts: &StatementOptions<'_>,
    check: std::result::Result<Check, String>,
) -> Result<Report> {
    let kind = "CHECK";
    let fail = |m: String| {
        anyhow!(
            "{}: statement {} ({kind}) failed: {m}",
            statement.location,
            statement.index
        )
    };
    let check = check.map_err(fail)?;
    let outcome = engine
        .run_check(&check)
        .await
        .map_err(|e| fail(e.to_string()))?;
    check_report(statement, opts, &check, outcome)
}

/// Record a check's outcome in the run, print its summary line (a deferred check's, whose own
/// statement ran inside another), and fail for a failing `ERROR` check.
fn report_check(
    statement: &PipelineStatement,
    opts: &StatementOptions<'_>,
    check: &Check,
    outcome: CheckOutcome,
) -> Result<()> {
    let duration = Duration::from_millis(outcome.duration_ms);
    let mut report = check_report(statement, opts, check, outcome)?;
    report.detail.push_str(" (in the next write's scan)");
    if opts.summary {
        eprintln!("{}", summary_line(statement, opts.total, &report, duration));
    }
    Ok(())
}

/// A check's outcome as its statement's report (or the error of a failing `ERROR` check),
/// recorded in the run.
fn check_report(
    statement: &PipelineStatement,
    opts: &StatementOptions<'_>,
    check: &Check,
    outcome: CheckOutcome,
) -> Result<Report> {
    let kind = "CHECK";
    let fail = |m: String| {
        anyhow!(
            "{}: statement {} ({kind}) failed: {m}",
            statement.location,
            statement.index
        )
    };
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
    let sample = outcome.sample.as_deref().unwrap_or("");
    match check.severity {
        Severity::Error => Err(fail(format!(
            "check {}{on}: {} failing row(s); the run stops before later writes. First rows:\n{sample}",
            check.name,
            group(n)
        ))),
        Severity::Warn => {
            eprintln!(
                "warning: check {}{on}: {} failing row(s). First rows:\n{sample}",
                check.name,
                group(n)
            );
            Ok(Report {
                kind: kind.into(),
                detail: format!("{}{on} WARN {} failing row(s)", check.name, group(n)),
                rows: Some(n),
                skipped: false,
            })
        }
    }
}

fn summary_line(
    statement: &PipelineStatement,
    total: usize,
    report: &Report,
    elapsed: Duration,
) -> String {
    format!(
        "[{}/{}] {}  {}  {}  {}",
        statement.index,
        total,
        statement.location,
        report.kind,
        report.detail,
        fmt_duration(elapsed)
    )
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// 1234567 -> "1,234,567".
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
