//! Which runs are dead, provably: a run holds an exclusive lock on
//! `<state_dir>/locks/<run_id>.lock` while its process lives (the operating system releases it
//! when the process dies, however it dies). A run that recorded its end is dead; a run still
//! marked running is dead when its lock file is there and nobody holds it. A run without a lock
//! file on this machine (another machine's, or one from before locks) is never taken for dead.
//! The files such runs staged and never committed are then safe to delete
//! ([`crate::staging::sweep`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::state::{RunStatus, StateStore};

/// The lock a live run holds; dropped (the file removed) when the run ends normally.
#[derive(Debug)]
pub(super) struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Take the lock of `run_id` in `dir`; `None` (with the reason) when the file system does
    /// not allow it: the run then simply cannot be proven dead later.
    pub(super) fn acquire(dir: &Path, run_id: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{run_id}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.try_lock()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { path, _file: file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the run that locked `dir/<run_id>.lock` is gone: the file is there and free.
fn lock_is_free(dir: &Path, run_id: &str) -> bool {
    let Ok(file) = File::open(dir.join(format!("{run_id}.lock"))) else {
        return false;
    };
    file.try_lock().is_ok()
}

/// What a run may clean up: the runs of `pipeline` that are provably dead, and the staged
/// files of their recorded but unfinished commits, which must stay for `--resume`.
#[derive(Debug, Default)]
pub struct DeadRuns {
    pub runs: HashSet<String>,
    pub keep: HashSet<String>,
}

pub(super) async fn dead_runs(
    store: &dyn StateStore,
    pipeline: &str,
    current: &str,
    locks: &Path,
) -> crate::Result<DeadRuns> {
    let mut dead = DeadRuns::default();
    for run in store.runs(Some(pipeline)).await? {
        if run.run_id == current {
            continue;
        }
        let is_dead = match run.status {
            RunStatus::Running => lock_is_free(locks, &run.run_id),
            _ => true,
        };
        if !is_dead {
            continue;
        }
        // A succeeded run finished every commit; of the others, only those that recorded a
        // commit need their steps read (most recorded none).
        let commits = match run.status {
            RunStatus::Succeeded => Vec::new(),
            _ => store.commits(&run.run_id).await?,
        };
        if !commits.is_empty() {
            let finished: HashSet<usize> = store
                .steps(&run.run_id)
                .await?
                .iter()
                .filter(|s| s.status != crate::state::StepStatus::Failed)
                .map(|s| s.index)
                .collect();
            for commit in commits {
                if !finished.contains(&commit.index) {
                    dead.keep.extend(commit.files.into_iter().map(|f| f.staged));
                }
            }
        }
        dead.runs.insert(run.run_id);
    }
    Ok(dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_alive_and_a_released_one_dead() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path(), "r1").unwrap();
        assert!(!lock_is_free(dir.path(), "r1"), "held: alive");
        assert!(
            !lock_is_free(dir.path(), "r2"),
            "no lock file: unknown, not dead"
        );
        // A killed process leaves the file behind, unlocked.
        std::mem::forget(lock);
        let file = dir.path().join("r3.lock");
        std::fs::write(&file, "").unwrap();
        assert!(lock_is_free(dir.path(), "r3"));
        // A run that ends normally removes its file.
        drop(RunLock::acquire(dir.path(), "r4").unwrap());
        assert!(!dir.path().join("r4.lock").exists());
    }
}
