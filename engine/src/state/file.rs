//! The embedded state store: an append-only JSON-lines journal (`state.jsonl`) in a directory
//! (default `.flowengine/` in the working directory). Each event is one line written with a
//! single append and flushed to disk, so a crash loses at most the line being written, which
//! replay ignores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{
    CheckRecord, CommitRecord, RunRecord, RunStatus, StateError, StateStore, StepRecord,
    WatermarkRecord,
};

const FILE: &str = "state.jsonl";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    RunStarted(RunRecord),
    Step(StepRecord),
    Watermark(WatermarkRecord),
    Check(CheckRecord),
    Commit(CommitRecord),
    RunFinished {
        run_id: String,
        status: RunStatus,
        error: Option<String>,
        finished_at: String,
    },
}

struct Replayed {
    runs: Vec<RunRecord>,
    steps: Vec<StepRecord>,
    marks: Vec<WatermarkRecord>,
    checks: Vec<CheckRecord>,
    commits: Vec<CommitRecord>,
}

#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
}

impl FileStateStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
        }
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            location: self.path.display().to_string(),
            source,
        }
    }

    async fn append(&self, event: &Event) -> Result<(), StateError> {
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.io(e))?;
        }
        let mut line = serde_json::to_string(event).map_err(|e| StateError::Corrupt {
            location: self.location(),
            message: e.to_string(),
        })?;
        line.push('\n');
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        if ends_torn(&mut f).await.map_err(|e| self.io(e))? {
            // A crash tore the last line: end it, so this event starts a line of its own
            // (replay then skips the torn one instead of reading it glued to this one).
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes()).await.map_err(|e| self.io(e))?;
        f.sync_data().await.map_err(|e| self.io(e))?;
        Ok(())
    }

    async fn replay(&self) -> Result<Replayed, StateError> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.io(e)),
        };
        let mut runs: Vec<RunRecord> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut steps = Vec::new();
        let mut marks = Vec::new();
        let mut checks = Vec::new();
        let mut commits = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event: Event = match serde_json::from_str(line) {
                Ok(e) => e,
                // A torn line (a crash while appending; the next append ends it) is ignored;
                // anything else is damage.
                Err(_) if i + 1 == lines.len() || is_torn(line) => continue,
                Err(e) => {
                    return Err(StateError::Corrupt {
                        location: format!("{}:{}", self.path.display(), i + 1),
                        message: e.to_string(),
                    });
                }
            };
            match event {
                Event::RunStarted(run) => {
                    index.insert(run.run_id.clone(), runs.len());
                    runs.push(run);
                }
                Event::Step(step) => steps.push(step),
                Event::Watermark(w) => marks.push(w),
                Event::Check(c) => checks.push(c),
                Event::Commit(c) => commits.push(c),
                Event::RunFinished {
                    run_id,
                    status,
                    error,
                    finished_at,
                } => {
                    if let Some(&i) = index.get(&run_id) {
                        runs[i].status = status;
                        runs[i].error = error;
                        runs[i].finished_at = Some(finished_at);
                    }
                }
            }
        }
        Ok(Replayed {
            runs,
            steps,
            marks,
            checks,
            commits,
        })
    }
}

/// Whether the file's last byte is not a newline (a line torn by a crash).
async fn ends_torn(f: &mut tokio::fs::File) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let len = f.metadata().await?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(std::io::SeekFrom::Start(len - 1)).await?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last).await?;
    Ok(last[0] != b'\n')
}

/// A line a crash cut short: the start of an event that is not valid JSON (every event is one
/// object on one line, so a complete one always parses).
fn is_torn(line: &str) -> bool {
    line.starts_with("{\"event\":") && serde_json::from_str::<serde_json::Value>(line).is_err()
}

#[async_trait::async_trait]
impl StateStore for FileStateStore {
    async fn begin_run(&self, run: &RunRecord) -> Result<(), StateError> {
        self.append(&Event::RunStarted(run.clone())).await
    }

    async fn record_step(&self, step: &StepRecord) -> Result<(), StateError> {
        self.append(&Event::Step(step.clone())).await
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), StateError> {
        self.append(&Event::RunFinished {
            run_id: run_id.to_string(),
            status,
            error,
            finished_at: super::now(),
        })
        .await
    }

    async fn runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        let runs = self.replay().await?.runs;
        Ok(runs
            .into_iter()
            .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
            .collect())
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError> {
        let steps = self.replay().await?.steps;
        Ok(steps.into_iter().filter(|s| s.run_id == run_id).collect())
    }

    async fn record_watermark(&self, watermark: &WatermarkRecord) -> Result<(), StateError> {
        self.append(&Event::Watermark(watermark.clone())).await
    }

    async fn record_check(&self, check: &CheckRecord) -> Result<(), StateError> {
        self.append(&Event::Check(check.clone())).await
    }

    async fn checks(&self) -> Result<Vec<CheckRecord>, StateError> {
        Ok(self.replay().await?.checks)
    }

    async fn record_commit(&self, commit: &CommitRecord) -> Result<(), StateError> {
        self.append(&Event::Commit(commit.clone())).await
    }

    async fn commits(&self, run_id: &str) -> Result<Vec<CommitRecord>, StateError> {
        let commits = self.replay().await?.commits;
        Ok(commits.into_iter().filter(|c| c.run_id == run_id).collect())
    }

    async fn watermarks(&self, pipeline: Option<&str>) -> Result<Vec<WatermarkRecord>, StateError> {
        let marks = self.replay().await?.marks;
        Ok(marks
            .into_iter()
            .filter(|w| pipeline.is_none_or(|p| w.pipeline == p))
            .collect())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StepStatus, now};

    fn run(id: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            pipeline: "/p.sql".into(),
            content_hash: "h".into(),
            variables: Default::default(),
            started_at: now(),
            finished_at: None,
            status: RunStatus::Running,
            error: None,
            resumed_from: None,
        }
    }

    #[tokio::test]
    async fn journal_replays_runs_and_steps_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path());
        store.begin_run(&run("a")).await.unwrap();
        store
            .record_step(&StepRecord {
                run_id: "a".into(),
                index: 1,
                line: 1,
                column: 1,
                kind: "COPY".into(),
                status: StepStatus::Succeeded,
                rows: Some(3),
                duration_ms: 5,
                error: None,
                finished_at: now(),
                committed_by: None,
            })
            .await
            .unwrap();
        store
            .finish_run("a", RunStatus::Failed, Some("boom".into()))
            .await
            .unwrap();
        // Simulate a crash in the middle of an append.
        let path = dir.path().join(FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\":\"run_sta");
        std::fs::write(&path, text).unwrap();
        let runs = store.runs(None).await.unwrap();
        assert_eq!(runs.len(), 1);
        // The next event after a torn line starts a line of its own; both replay.
        store.begin_run(&run("b")).await.unwrap();
        let runs = store.runs(None).await.unwrap();
        assert_eq!(runs.len(), 2, "{:?}", std::fs::read_to_string(&path));
        let runs = &runs[..1];
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert_eq!(runs[0].error.as_deref(), Some("boom"));
        assert_eq!(store.steps("a").await.unwrap()[0].rows, Some(3));
        assert!(store.runs(Some("/other.sql")).await.unwrap().is_empty());
    }
}
