//! A run's records in the state store: the run, its steps, its watermarks and its check results,
//! and where a resumed run starts. A micro-batch of `--follow` holds its records back until it is
//! known to read something, so idle polls leave no trace. A state-store failure is reported but
//! does not fail the pipeline's data work.

use std::collections::HashMap;
use std::sync::Arc;

use super::observer::RunObserver;
use super::statement::RunContext;
use crate::error::{EngineError, Result};
use crate::pipeline::incremental::{IncrementalRange, IncrementalView};
use crate::pipeline::quality::{Check, CheckOutcome};
use crate::state::{
    self, CommitRecord, RunRecord, RunStatus, StateStore, StepRecord, StepStatus, WatermarkRecord,
};

/// The committed watermark of each incremental view of `pipeline`, and the high marks of the run
/// being resumed.
pub(super) async fn load_watermarks(
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
#[derive(Debug)]
pub(super) struct ResumePoint {
    pub(super) run_id: String,
    pub(super) committed: HashMap<usize, String>,
    /// Commits of files a run recorded but was killed before finishing, by statement number:
    /// the resumed run finishes them instead of writing again.
    pub(super) interrupted: HashMap<usize, CommitRecord>,
    /// How many of the committed statements are writes (the ones a resumed run skips).
    pub(super) writes: usize,
}

/// Whether a step of this kind wrote to a sink (a resumed run skips it rather than replaying it).
fn is_write(kind: &str) -> bool {
    matches!(kind, "COPY" | "UPDATE" | "DELETE" | "TRUNCATE") || kind.starts_with("INSERT")
}

pub(super) async fn resume_point(
    store: &dyn StateStore,
    pipeline: &str,
    hash: &str,
) -> Result<ResumePoint> {
    let runs = store.runs(Some(pipeline)).await?;
    let Some(last) = runs.last() else {
        return Err(EngineError::Usage(format!(
            "nothing to resume: {pipeline} has no recorded run in {}",
            store.location()
        )));
    };
    match last.status {
        RunStatus::Failed | RunStatus::Interrupted => {}
        RunStatus::Succeeded => {
            return Err(EngineError::Usage(format!(
                "nothing to resume: the last run of {pipeline} ({}) succeeded",
                last.run_id
            )));
        }
        RunStatus::Running => {
            // A run killed without a chance to record its end counts as failed.
        }
    }
    if last.content_hash != hash {
        return Err(EngineError::Usage(format!(
            "refusing to resume: {pipeline} changed since run {} (content hash {} -> {}); run it without --resume",
            last.run_id,
            &last.content_hash[..12.min(last.content_hash.len())],
            &hash[..12.min(hash.len())]
        )));
    }
    // The last run and the runs it resumed, newest first: a resumed run killed before it
    // reached a statement did not record it skipped, but an earlier run committed it.
    let mut chain = vec![last];
    while let Some(from) = chain.last().and_then(|r| r.resumed_from.as_deref()) {
        match runs.iter().find(|r| r.run_id == from) {
            Some(run) if !chain.iter().any(|c| c.run_id == run.run_id) => chain.push(run),
            _ => break,
        }
    }
    let mut committed = HashMap::new();
    let mut writes = 0;
    let mut interrupted = HashMap::new();
    for run in &chain {
        for step in store.steps(&run.run_id).await? {
            let by = match step.status {
                StepStatus::Succeeded => run.run_id.clone(),
                StepStatus::Skipped => match step.committed_by {
                    Some(by) => by,
                    None => continue,
                },
                StepStatus::Failed => continue,
            };
            if let std::collections::hash_map::Entry::Vacant(e) = committed.entry(step.index) {
                e.insert(by);
                writes += usize::from(is_write(&step.kind));
            }
        }
    }
    // A commit recorded without its step: the run died between the record and the step.
    for run in &chain {
        for commit in store.commits(&run.run_id).await? {
            if !committed.contains_key(&commit.index) {
                interrupted.entry(commit.index).or_insert(commit);
            }
        }
    }
    Ok(ResumePoint {
        run_id: last.run_id.clone(),
        committed,
        interrupted,
        writes,
    })
}

/// Writes run state.
pub(super) struct Recorder<'a> {
    pub(super) store: Option<Arc<dyn StateStore>>,
    pub(super) run_id: String,
    pub(super) pipeline: String,
    /// A micro-batch's records held back until it is known to read something.
    pub(super) deferred: std::sync::Mutex<Option<Deferred>>,
    /// Where warnings about the store go.
    pub(super) observer: &'a dyn RunObserver,
}

/// What a deferred run would have recorded so far.
pub(super) struct Deferred {
    run: RunRecord,
    steps: Vec<StepRecord>,
    marks: Vec<WatermarkRecord>,
}

impl Deferred {
    pub(super) fn new(run: RunRecord) -> Self {
        Self {
            run,
            steps: Vec::new(),
            marks: Vec::new(),
        }
    }
}

impl Recorder<'_> {
    fn take_deferred(&self) -> Option<Deferred> {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn warn(&self, message: String) {
        tracing::warn!(target: "flowengine::pipeline", run_id = %self.run_id, "{message}");
        self.observer.notice(&format!("warning: {message}"));
    }

    /// Forget a deferred run (an idle poll).
    pub(super) fn discard(&self) {
        self.take_deferred();
    }

    /// Record a deferred run and what it held back; later records are written directly.
    pub(super) async fn activate(&self) -> Result<()> {
        let (Some(store), Some(d)) = (&self.store, self.take_deferred()) else {
            return Ok(());
        };
        store.begin_run(&d.run).await?;
        for step in d.steps {
            store.record_step(&step).await?;
        }
        for mark in d.marks {
            if let Err(e) = store.record_watermark(&mark).await {
                self.warn(format!(
                    "could not record the watermark of {}: {e}",
                    mark.name
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn check(&self, check: &Check, outcome: &CheckOutcome) {
        if let Err(e) = self.activate().await {
            self.warn(format!("could not record run {}: {e}", self.run_id));
        }
        if let Some(store) = &self.store {
            let record = outcome.record(check, &self.run_id, &self.pipeline);
            if let Err(e) = store.record_check(&record).await {
                self.warn(format!("could not record check {}: {e}", check.name));
            }
        }
    }

    pub(super) async fn watermark(
        &self,
        view: &IncrementalView,
        range: &IncrementalRange,
        committed: bool,
    ) {
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
                self.warn(format!(
                    "could not record the watermark of {}: {e}",
                    view.name
                ));
            }
        }
    }

    /// Record a step. A failure is the caller's to handle: a committed write whose step is
    /// not recorded would be written again by `--resume`.
    pub(super) async fn step(&self, step: StepRecord) -> Result<()> {
        if let Some(d) = self
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            d.steps.push(step);
            return Ok(());
        }
        if let Some(store) = &self.store {
            store.record_step(&step).await?;
        }
        Ok(())
    }

    /// Record a step that changed nothing (a failure, a deferred check): a failure to record it
    /// is reported and the run goes on.
    pub(super) async fn step_or_warn(&self, step: StepRecord) {
        let index = step.index;
        if let Err(e) = self.step(step).await {
            self.warn(format!("could not record step {index}: {e}"));
        }
    }

    pub(super) async fn finish(&self, status: RunStatus, error: Option<String>) {
        // A failed micro-batch is recorded even before it read anything.
        if let Err(e) = self.activate().await {
            self.warn(format!("could not record run {}: {e}", self.run_id));
        }
        if let Some(store) = &self.store
            && let Err(e) = store.finish_run(&self.run_id, status, error).await
        {
            self.warn(format!(
                "could not record the end of run {}: {e}",
                self.run_id
            ));
        }
    }
}
