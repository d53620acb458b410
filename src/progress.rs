//! Live progress of a running statement on a terminal: rows and bytes read, elapsed time.
//! Nothing is drawn when stderr is not a terminal, or for statements that finish quickly.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use engine::progress::{self, InputSize};
use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Delay before a progress line appears, so short statements print nothing extra.
const SHOW_AFTER: Duration = Duration::from_millis(700);
const TICK: Duration = Duration::from_millis(200);

/// A progress display bound to one executing plan; cleared when dropped.
pub(crate) struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Start displaying progress for `plan` if stderr is a terminal and `enabled`.
    pub(crate) fn start(plan: &Arc<dyn ExecutionPlan>, label: String, enabled: bool) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self {
                task: None,
                bar: None,
            };
        }
        // Hidden until SHOW_AFTER, so quick statements draw nothing at all.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label);
        let input = progress::input_size(plan);
        let plan = Arc::clone(plan);
        let shown = bar.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            tokio::time::sleep(SHOW_AFTER).await;
            shown.set_draw_target(ProgressDrawTarget::stderr());
            loop {
                let snap = progress::snapshot(&plan);
                shown.set_message(describe(&snap, input, started.elapsed()));
                shown.tick();
                tokio::time::sleep(TICK).await;
            }
        });
        Self {
            task: Some(task),
            bar: Some(bar),
        }
    }
}

fn describe(snap: &progress::ProgressSnapshot, input: InputSize, elapsed: Duration) -> String {
    let mut parts = vec![format!("{} rows read", HumanCount(snap.rows_read))];
    if snap.bytes_scanned > 0 {
        parts.push(format!("{} read", HumanBytes(snap.bytes_scanned)));
    }
    if input.files > 0 {
        // Scans split large files into byte ranges; count ranges, not files.
        parts.push(format!(
            "input {} ({}/{} scan ranges done)",
            HumanBytes(input.bytes),
            snap.files_done.min(input.files),
            input.files
        ));
    }
    parts.push(format!("{:.1}s", elapsed.as_secs_f64()));
    parts.join(" · ")
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
