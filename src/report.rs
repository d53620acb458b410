//! What a pipeline run reports, on the terminal: one summary line per statement and notices on
//! stderr, a progress line while a statement runs, `--explain` plans and the rows of the query
//! shown on stdout, Ctrl-C as the interrupt. The run itself is `engine::pipeline::runtime`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use engine::pipeline::PipelineStatement;
use engine::pipeline::runtime::observer::OutputError;
use engine::pipeline::runtime::{Interrupt, RowSink, RunObserver, StatementSummary};

use crate::cli::DisplayArgs;
use crate::output::ResultPrinter;
use crate::progress::Progress;

/// The terminal as a run's observer.
pub(crate) struct Terminal {
    display: DisplayArgs,
    /// Ctrl-C interrupts the run (`flowengine run`); otherwise the process's default applies.
    interruptible: bool,
}

impl Terminal {
    pub(crate) fn new(display: &DisplayArgs, interruptible: bool) -> Self {
        Self {
            display: display.clone(),
            interruptible,
        }
    }
}

impl RunObserver for Terminal {
    fn interrupt(&self) -> Interrupt {
        if self.interruptible {
            Box::pin(async {
                let _ = tokio::signal::ctrl_c().await;
            })
        } else {
            Box::pin(std::future::pending())
        }
    }

    fn run_started(&self, span: &tracing::Span, pipeline: &std::path::Path) {
        if let Some(trace_id) = flight_server::trace::trace_id(span) {
            tracing::info!(target: "flowengine::pipeline", trace_id, pipeline = %pipeline.display(), "pipeline run started");
        }
    }

    fn statement_done(&self, s: &StatementSummary<'_>) {
        let (index, total, location) = (s.statement.index, s.total, &s.statement.location);
        let elapsed = seconds(s.elapsed);
        match s.detail {
            Some(detail) => {
                let mut line = format!(
                    "[{index}/{total}] {location}  {}  {detail}  {elapsed}",
                    s.kind
                );
                if let Some(bad) = &s.bad_records {
                    line.push_str(&format!("  ({bad})"));
                }
                eprintln!("{line}");
            }
            None => eprintln!("[{index}/{total}] {location}  FAILED  {elapsed}"),
        }
    }

    fn notice(&self, message: &str) {
        eprintln!("{message}");
    }

    fn explain(&self, statement: &PipelineStatement, kind: &str, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "-- [{}] {} {kind}\n{text}",
            statement.index, statement.location
        );
    }

    fn executing(
        &self,
        label: String,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        Some(Box::new(Progress::start(plan, label, !self.display.quiet)))
    }

    fn rows(&self) -> Option<Box<dyn RowSink + '_>> {
        Some(Box::new(ResultPrinter::new(
            std::io::BufWriter::new(std::io::stdout()),
            self.display.format,
            self.display.max_rows,
        )))
    }
}

impl<W: Write + Send> RowSink for ResultPrinter<W> {
    fn push(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        ResultPrinter::push(self, batch).map_err(Into::into)
    }

    fn finish(self: Box<Self>, empty: RecordBatch) -> Result<u64, OutputError> {
        ResultPrinter::finish(*self, Some(empty)).map_err(Into::into)
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}
