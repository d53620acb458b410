//! `flowengine run --follow`: the engine's micro-batch loop
//! (`engine::pipeline::runtime::follow`) until Ctrl-C (cancels the running micro-batch) or
//! SIGTERM (stops after it).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use engine::pipeline::runtime::follow::{FollowObserver, FollowOptions, follow_until};

use crate::cli::{GlobalArgs, RunArgs};
use crate::report::Terminal;

impl FollowObserver for Terminal {}

/// `flowengine run --follow`: until Ctrl-C or SIGTERM.
pub(crate) async fn follow(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    let request = super::run::request(&args);
    let options = FollowOptions::new(&request, args.interval, args.max_batches)?;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_stop_listener(Arc::clone(&stop));
    eprintln!(
        "following {}: micro-batches until Ctrl-C or SIGTERM",
        args.pipeline.display()
    );
    let observer = Terminal::new(&args.display, true);
    let end = follow_until(
        &super::engine_factory(global),
        &connectors::registry(),
        &request,
        &options,
        stop,
        &observer,
    )
    .await?;
    Ok(super::run::exit_code(end))
}

/// SIGTERM sets `stop`: the loop ends after the current micro-batch commits.
fn spawn_stop_listener(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        eprintln!("stopping after the current micro-batch");
        stop.store(true, Ordering::Release);
    });
}
