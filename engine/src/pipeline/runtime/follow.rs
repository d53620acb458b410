//! A pipeline run continuously in micro-batches (`flowengine run --follow`, `serve --follow`).
//! Each micro-batch is one ordinary run in a session of its own (recorded in the state store, its
//! incremental views' watermarks committed and its consumed messages acknowledged only after its
//! sinks committed), so a crash at any point loses nothing: the next start re-reads from the last
//! committed watermark, and the broker delivers unacknowledged messages again. A micro-batch
//! starts when the previous one committed (a slow sink slows reading: backpressure), or after
//! the interval when the previous found nothing new. `${batch}` names each micro-batch (for
//! output file names). The loop stops between micro-batches when asked; an interrupt cancels the
//! running one (nothing it wrote is committed, its messages are read again next time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Batch, RunEnd, RunObserver, RunRequest, run_once};
use crate::Engine;
use crate::connector::ConnectorRegistry;
use crate::error::{EngineError, Result};

/// Consecutive failed micro-batches after which the loop gives up.
pub const MAX_FAILURES: u32 = 10;

/// How to follow a pipeline.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Wait this long after a micro-batch that found nothing new.
    pub interval: Duration,
    /// Stop after this many micro-batches that read something.
    pub max_batches: Option<u64>,
}

impl FollowOptions {
    /// Check a follow request: `${batch}` is the loop's own, the interval a number of seconds.
    pub fn new(request: &RunRequest, interval_secs: f64, max_batches: Option<u64>) -> Result<Self> {
        if request.vars.iter().any(|(k, _)| k == "batch") {
            return Err(EngineError::Usage(
                "--follow sets ${batch} itself; do not pass --var batch=...".into(),
            ));
        }
        if !(interval_secs.is_finite() && interval_secs >= 0.0) {
            return Err(EngineError::Usage(
                "--interval must be a number of seconds >= 0".into(),
            ));
        }
        Ok(Self {
            interval: Duration::from_secs_f64(interval_secs),
            max_batches,
        })
    }
}

/// What the loop reports after each micro-batch that read something, and each failure.
pub trait FollowObserver: RunObserver {
    fn committed(&self, _batch: &Batch, _elapsed: Duration) {}
    fn failed(&self) {}
}

/// Run micro-batches of `request.pipeline`, each in a fresh engine from `new_engine`, until
/// `stop` is set (checked between micro-batches) or the observer interrupts one (then
/// [`RunEnd::Interrupted`]).
pub async fn follow_until(
    new_engine: &(dyn Fn() -> Result<Engine> + Sync),
    connectors: &ConnectorRegistry,
    request: &RunRequest,
    options: &FollowOptions,
    stop: Arc<AtomicBool>,
    observer: &dyn FollowObserver,
) -> Result<RunEnd> {
    let mut batches = 0u64;
    let mut failures = 0u32;
    // Whether an idle poll succeeded (so the pipeline itself is known to work).
    let mut polled = false;
    let mut last_id = 0u128;
    let name = request.pipeline.display().to_string();
    while !stop.load(Ordering::Acquire) {
        if options.max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        // Milliseconds since the epoch, strictly increasing: sortable and unique file names.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        last_id = now.max(last_id + 1);
        let mut batch_request = request.clone();
        batch_request
            .vars
            .push(("batch".into(), format!("{last_id:013}")));
        batch_request.summaries = false;
        let started = Instant::now();
        let outcome = match new_engine() {
            Ok(engine) => run_once(&engine, connectors, &batch_request, observer, true).await,
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok((RunEnd::Interrupted, _)) => return Ok(RunEnd::Interrupted),
            Ok((RunEnd::Succeeded, batch)) if batch.advanced => {
                failures = 0;
                batches += 1;
                observer.committed(&batch, started.elapsed());
                observer.notice(&format!(
                    "{name}: batch {last_id:013} committed in {} ms ({} rows written, {} messages acknowledged, {} bad records, {} messages behind)",
                    started.elapsed().as_millis(),
                    batch.rows_written,
                    batch.acknowledged,
                    batch.bad_records,
                    batch.backlog
                ));
                Duration::ZERO
            }
            Ok(_) => {
                failures = 0;
                polled = true;
                options.interval
            }
            // A first micro-batch that fails (a usage, syntax or configuration error) stops at
            // once; later failures (a broker or database down) are retried.
            Err(e) if batches == 0 && failures == 0 && !polled => return Err(e),
            Err(e) => {
                failures += 1;
                observer.failed();
                observer.notice(&format!(
                    "{name}: batch {last_id:013} failed ({failures} in a row): {e}"
                ));
                if failures >= MAX_FAILURES {
                    return Err(EngineError::GaveUp(format!(
                        "--follow stopped after {MAX_FAILURES} failed micro-batches in a row: {e}"
                    )));
                }
                // Back off: 1 s, 2 s, 4 s ... up to a minute.
                Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
            }
        };
        if !wait.is_zero() {
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50).min(wait)).await;
            }
        }
    }
    observer.notice(&format!("{name}: stopped after {batches} micro-batch(es)"));
    Ok(RunEnd::Succeeded)
}
