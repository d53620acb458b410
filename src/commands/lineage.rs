//! `flowengine lineage PIPELINE.sql`: plan every statement (as `--dry-run` does: DDL runs so later
//! statements resolve, nothing is written) and print the lineage of each write and view.

use std::process::ExitCode;

use anyhow::Result;
use engine::lineage;
use engine::pipeline::{DryRun, Pipeline};

use crate::cli::{GlobalArgs, LineageArgs};

pub(crate) async fn run(global: &GlobalArgs, args: LineageArgs) -> Result<ExitCode> {
    let (engine, _) = super::build_engine(global)?;
    let lookup = super::var_lookup(&args.vars);
    let pipeline = Pipeline::from_file(&args.pipeline, &lookup, &super::dialect(&engine))?;
    let mut dry = DryRun::new();
    let mut all = Vec::new();
    for statement in &pipeline.statements {
        let prepared = engine.prepare(statement).await?;
        if let Some(l) = lineage::of_plan(&prepared.logical) {
            all.push((statement.clone(), l));
        }
        engine.start(&prepared, Some(&mut dry)).await?;
    }
    match args.format.as_str() {
        "dot" => print!(
            "{}",
            lineage::render_dot(&all.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>())
        ),
        "json" => {
            let items: Vec<_> = all
                .iter()
                .map(|(s, l)| {
                    let mut v = lineage::to_json(l);
                    v["statement"] = serde_json::json!(s.index);
                    v["location"] = serde_json::json!(s.location.to_string());
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
        _ => {
            for (s, l) in &all {
                println!("[{}] {}", s.index, s.location);
                print!("{}", lineage::render_text(l));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
