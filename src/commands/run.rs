//! `flowengine run PIPELINE.sql`: every statement in order in one session; stop at the first failure.

use std::process::ExitCode;

use anyhow::Result;
use engine::pipeline::Pipeline;

use crate::cli::{GlobalArgs, RunArgs};
use crate::exec::{Rows, StatementOptions, run_statement};

pub(crate) async fn run(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    let (engine, _) = super::build_engine(global)?;
    let lookup = super::var_lookup(&args.vars);
    let pipeline = Pipeline::from_file(&args.pipeline, &lookup, &super::dialect(&engine))?;
    if pipeline.statements.is_empty() {
        return Err(
            crate::UsageError(format!("{} contains no SQL statements", pipeline.file)).into(),
        );
    }
    let total = pipeline.statements.len();
    let mut dry_run = args.dry_run.then(engine::pipeline::DryRun::new);
    for statement in &pipeline.statements {
        let last = statement.index == total;
        let opts = StatementOptions {
            explain: args.explain,
            output: if last { args.output.as_deref() } else { None },
            rows: if last { Rows::Print } else { Rows::Count },
            summary: !args.display.quiet,
            total,
        };
        // Ctrl-C cancels the running statement: dropping it drops its staged writes, so an
        // interrupted sink leaves nothing behind.
        tokio::select! {
            result = run_statement(&engine, statement, &args.display, &opts, dry_run.as_mut()) => result?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!(
                    "interrupted: statement {} at {} was cancelled; nothing it wrote was committed",
                    statement.index, statement.location
                );
                return Ok(ExitCode::from(130));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
