//! What a pipeline run tells the program that drives it (the CLI prints it, `serve` meters it):
//! one summary per statement, notices and warnings for the person running it, `--explain` text,
//! a live progress display while a statement executes, and the rows of the query to show.
//! The runtime itself prints nothing.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;

use crate::pipeline::PipelineStatement;

/// An error of the program showing a run's rows (a closed pipe, a full disk).
pub type OutputError = Box<dyn std::error::Error + Send + Sync>;

/// A future that completes when a run is to be interrupted.
pub type Interrupt = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One statement's outcome, as a summary line shows it.
#[derive(Debug)]
pub struct StatementSummary<'a> {
    pub statement: &'a PipelineStatement,
    /// Statements in the run (for `[i/N]`).
    pub total: usize,
    /// `COPY`, `CHECK`, `CREATE INCREMENTAL VIEW`, ... (empty for a failed statement).
    pub kind: &'a str,
    /// What it did: `1,000 rows written`, `skipped: committed by run ...`; `None` when it failed.
    pub detail: Option<&'a str>,
    pub elapsed: Duration,
    /// Bad input records its readers skipped or dead-lettered, as text (`None` when there were
    /// none).
    pub bad_records: Option<String>,
}

/// Receives what a run reports. Every method has a silent default.
pub trait RunObserver: Send + Sync {
    /// A future that completes when the person running the pipeline interrupts it (Ctrl-C):
    /// the running statement is cancelled and nothing it wrote is committed. Never, by default.
    fn interrupt(&self) -> Interrupt {
        Box::pin(std::future::pending())
    }

    /// A run of `pipeline` starts in `span` (to log its trace id, say).
    fn run_started(&self, _span: &tracing::Span, _pipeline: &std::path::Path) {}

    /// A statement finished or failed (only when the run asks for summaries).
    fn statement_done(&self, _summary: &StatementSummary<'_>) {}

    /// Something the person running the pipeline should read (a resumed run, a check evaluated
    /// later, a warning check's failing rows).
    fn notice(&self, _message: &str) {}

    /// `--explain`: the plans of a statement, before it runs.
    fn explain(&self, _statement: &PipelineStatement, _kind: &str, _text: &str) {}

    /// A statement starts executing `plan`: a progress display may follow it until the returned
    /// guard is dropped.
    fn executing(
        &self,
        _label: String,
        _plan: &Arc<dyn ExecutionPlan>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }

    /// Where the rows of a query the run shows go (`None`: they are only counted).
    fn rows(&self) -> Option<Box<dyn RowSink + '_>> {
        None
    }
}

/// Shows one query's result, batch by batch.
pub trait RowSink: Send {
    fn push(&mut self, batch: &RecordBatch) -> Result<(), OutputError>;
    /// After the last batch; `empty` has the result's schema and no rows (for a header). Returns
    /// the number of rows shown or counted.
    fn finish(self: Box<Self>, empty: RecordBatch) -> Result<u64, OutputError>;
}

/// An observer that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl RunObserver for Silent {}
