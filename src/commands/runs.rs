//! `flowengine runs [PIPELINE.sql] [--run ID]`: the recorded runs (from `system.runs`) or one
//! run's steps (`system.steps`), printed like any query result.

use std::process::ExitCode;

use anyhow::Result;
use engine::error::SourceLocation;
use engine::pipeline::PipelineStatement;
use engine::state;

use crate::cli::{GlobalArgs, RunsArgs};
use engine::pipeline::runtime::{Rows, StatementOptions, run_statement};

use crate::report::Terminal;

pub(crate) async fn run(global: &GlobalArgs, args: RunsArgs) -> Result<ExitCode> {
    let (engine, loaded) = super::build_engine(global)?;
    let store = state::open(&loaded.config);
    state::register_system_tables(engine.context(), &store).await?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = match (&args.run, &args.pipeline) {
        (Some(run), _) => format!(
            "SELECT step, line, kind, status, rows, duration_ms, committed_by, error \
             FROM system.steps WHERE run_id = {} ORDER BY step, finished_at",
            quote(run)
        ),
        (None, pipeline) => {
            let filter = match pipeline {
                Some(p) => {
                    let canonical = std::fs::canonicalize(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string();
                    format!("WHERE pipeline = {}", quote(&canonical))
                }
                None => String::new(),
            };
            format!(
                "SELECT * FROM (SELECT run_id, started_at, finished_at, status, resumed_from, \
                 pipeline, error FROM system.runs {filter} ORDER BY started_at DESC LIMIT {}) \
                 ORDER BY started_at",
                args.limit
            )
        }
    };
    let statement = PipelineStatement {
        index: 1,
        location: SourceLocation {
            file: "<runs>".into(),
            line: 1,
            column: 1,
        },
        sql,
    };
    let opts = StatementOptions::plain(1, Rows::Show, false);
    run_statement(
        &engine,
        &statement,
        &Terminal::new(&args.display, false),
        &opts,
        None,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
