//! Crash points for tests: `FLOWENGINE_FAULT=<point>[:<n>]` aborts the process (as a kill
//! would: no destructor, no cleanup) when it reaches `point`, or its `n`-th occurrence. Kill
//! tests use it to hold a crash window open exactly instead of racing a timer. Unset, every
//! point is a no-op.
//!
//! Points:
//! - `commit.before_record:<statement>`: the statement's files are staged, the commit not yet
//!   recorded (a kill while writing);
//! - `commit.rename:<n>`: after the `n`-th staged file of a statement was renamed into place;
//! - `commit.before_renames`: after the commit was recorded, before the first rename;
//! - `step.before_record`: after a statement committed, before its step was recorded;
//! - `step.after_record`: after a write's step was recorded, before the next statement;
//! - `run.before_watermarks`: after every statement, before the watermarks are committed.

/// The environment variable that names the crash point.
pub const VARIABLE: &str = "FLOWENGINE_FAULT";

/// Abort here when `FLOWENGINE_FAULT` names `point` (without a count, or with `count`).
pub fn point(point: &str, count: usize) {
    let Ok(spec) = std::env::var(VARIABLE) else {
        return;
    };
    let (name, n) = match spec.split_once(':') {
        Some((name, n)) => (name, n.trim().parse::<usize>().ok()),
        None => (spec.as_str(), None),
    };
    if name.trim() == point && n.is_none_or(|n| n == count) {
        eprintln!("{VARIABLE}: aborting at {point} ({count})");
        std::process::abort();
    }
}
