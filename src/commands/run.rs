//! `flowengine run PIPELINE.sql`: the arguments become a run request for the engine's pipeline
//! runtime (`engine::pipeline::runtime`), which runs and records it; the terminal shows what it
//! reports. Exit codes: 0 success, 1 failure, 2 usage, 130 interrupted.

use std::process::ExitCode;

use anyhow::Result;
use engine::pipeline::runtime::{self, RunEnd, RunRequest};

use crate::cli::{GlobalArgs, RunArgs};
use crate::report::Terminal;

pub(crate) async fn run(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    if args.follow {
        return super::follow::follow(global, args).await;
    }
    let (engine, _) = super::build_engine(global)?;
    let observer = Terminal::new(&args.display, true);
    let (end, _) = runtime::run_once(
        &engine,
        &connectors::registry(),
        &request(&args),
        &observer,
        false,
    )
    .await?;
    Ok(exit_code(end))
}

/// What `args` ask the runtime to run.
pub(crate) fn request(args: &RunArgs) -> RunRequest {
    RunRequest {
        pipeline: args.pipeline.clone(),
        vars: args.vars.clone(),
        dry_run: args.dry_run,
        explain: args.explain,
        resume: args.resume,
        output: args.output.clone(),
        summaries: !args.display.quiet,
    }
}

pub(crate) fn exit_code(end: RunEnd) -> ExitCode {
    match end {
        RunEnd::Succeeded => ExitCode::SUCCESS,
        RunEnd::Interrupted => ExitCode::from(130),
    }
}
