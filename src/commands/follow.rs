//! `flowengine run --follow`: a pipeline run continuously in micro-batches. Each micro-batch is
//! one ordinary run (its own session, recorded in the state store, its incremental views'
//! watermarks committed and its consumed messages acknowledged only after its sinks committed),
//! so a crash at any point loses nothing: the next start re-reads from the last committed
//! watermark, and the broker delivers unacknowledged messages again. A micro-batch starts when the
//! previous one committed (a slow sink slows reading: backpressure), or after `--interval` when
//! the previous found nothing new. `${batch}` names each micro-batch (for output file names).
//! SIGTERM stops the loop once the current micro-batch is over; Ctrl-C cancels it at once (what
//! it wrote is not committed, and its messages are read again next time).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::run::Batch;
use crate::cli::{GlobalArgs, RunArgs};

/// Consecutive failed micro-batches after which `--follow` gives up.
const MAX_FAILURES: u32 = 10;

/// What the loop reports after each micro-batch that read something (and each failure).
pub(crate) trait Observer: Send + Sync {
    fn committed(&self, batch: &Batch, elapsed: Duration);
    fn failed(&self);
}

/// `flowengine run --follow`: until Ctrl-C or SIGTERM.
pub(crate) async fn follow(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    check(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_stop_listener(Arc::clone(&stop));
    eprintln!(
        "following {}: micro-batches until Ctrl-C or SIGTERM",
        args.pipeline.display()
    );
    follow_until(global, args, stop, None).await
}

/// Check the arguments of a follow loop.
pub(crate) fn check(args: &RunArgs) -> Result<()> {
    if args.vars.iter().any(|(k, _)| k == "batch") {
        return Err(crate::UsageError(
            "--follow sets ${batch} itself; do not pass --var batch=...".into(),
        )
        .into());
    }
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        return Err(crate::UsageError("--interval must be a number of seconds >= 0".into()).into());
    }
    Ok(())
}

/// Run micro-batches of `args.pipeline` until `stop` is set (checked between micro-batches).
pub(crate) async fn follow_until(
    global: &GlobalArgs,
    args: RunArgs,
    stop: Arc<AtomicBool>,
    observer: Option<&dyn Observer>,
) -> Result<ExitCode> {
    let interval = Duration::from_secs_f64(args.interval);
    let mut batches = 0u64;
    let mut failures = 0u32;
    // Whether an idle poll succeeded (so the pipeline itself is known to work).
    let mut polled = false;
    let mut last_id = 0u128;
    let name = args.pipeline.display().to_string();
    while !stop.load(Ordering::Acquire) {
        if args.max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        // Milliseconds since the epoch, strictly increasing: sortable and unique file names.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        last_id = now.max(last_id + 1);
        let mut batch_args = args.clone();
        batch_args
            .vars
            .push(("batch".into(), format!("{last_id:013}")));
        batch_args.display.quiet = true;
        let started = Instant::now();
        let wait = match super::run::run_once(global, &batch_args, true).await {
            Ok((code, _)) if code != ExitCode::SUCCESS => return Ok(code),
            Ok((_, batch)) if batch.advanced => {
                failures = 0;
                batches += 1;
                if let Some(o) = observer {
                    o.committed(&batch, started.elapsed());
                }
                eprintln!(
                    "{name}: batch {last_id:013} committed in {} ms ({} rows written, {} messages acknowledged, {} bad records, {} messages behind)",
                    started.elapsed().as_millis(),
                    batch.rows_written,
                    batch.acknowledged,
                    batch.bad_records,
                    batch.backlog
                );
                Duration::ZERO
            }
            Ok(_) => {
                failures = 0;
                polled = true;
                interval
            }
            // A first micro-batch that fails (a usage, syntax or configuration error) stops at
            // once; later failures (a broker or database down) are retried.
            Err(e) if batches == 0 && failures == 0 && !polled => return Err(e),
            Err(e) => {
                failures += 1;
                if let Some(o) = observer {
                    o.failed();
                }
                eprintln!(
                    "{name}: batch {last_id:013} failed ({failures} in a row): {}",
                    crate::render_error(&e)
                );
                if failures >= MAX_FAILURES {
                    return Err(e.context(format!(
                        "--follow stopped after {MAX_FAILURES} failed micro-batches in a row"
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
    eprintln!("{name}: stopped after {batches} micro-batch(es)");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM ask the loop to stop before the next micro-batch.
fn spawn_stop_listener(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        eprintln!("stopping after the current micro-batch");
        stop.store(true, Ordering::Release);
    });
}
