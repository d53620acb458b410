//! `flowengine profile TABLE|FILE|QUERY`: one row per column of statistics, printed like a query
//! result (`--format table|csv|json`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use engine::pipeline::Pipeline;

use crate::cli::{GlobalArgs, ProfileArgs};
use crate::output::ResultPrinter;
use engine::pipeline::runtime::Rows;

pub(crate) async fn run(global: &GlobalArgs, args: ProfileArgs) -> Result<ExitCode> {
    let (engine, _) = super::build_engine(global)?;
    let lookup = super::var_lookup(&args.vars);
    let dialect = super::dialect(&engine);
    for file in &args.init {
        let pipeline = Pipeline::from_file(file, &lookup, &dialect)?;
        super::run_pipeline(&engine, &pipeline, &args.display, Rows::Count, false).await?;
    }
    let ctx = engine.context();
    let target = args.target.trim();
    let path = Path::new(target);
    let source = if !looks_like_query(target) && path.exists() {
        let format = file_format(path).with_context(|| {
            format!("cannot tell the format of {target} from its extension (csv, tsv, json, parquet, avro, arrow)")
        })?;
        let sql = format!(
            "CREATE EXTERNAL TABLE \"__profile\" STORED AS {format} LOCATION '{}'",
            target.replace('\'', "''")
        );
        ctx.sql(&sql)
            .await
            .with_context(|| format!("reading {target}"))?;
        "\"__profile\"".to_string()
    } else {
        target.to_string()
    };
    let batch = engine::profile::profile(ctx, &source, args.top, args.bins)
        .await
        .with_context(|| format!("profiling {target}"))?;
    let mut printer = ResultPrinter::new(
        std::io::stdout().lock(),
        args.display.format,
        args.display.max_rows,
    );
    printer.push(&batch)?;
    printer.finish(None)?;
    Ok(ExitCode::SUCCESS)
}

fn looks_like_query(s: &str) -> bool {
    let l = s.trim_start().to_ascii_lowercase();
    l.starts_with("select ") || l.starts_with("with ") || l.starts_with("values")
}

fn file_format(path: &Path) -> Option<&'static str> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name
        .trim_end_matches(".gz")
        .trim_end_matches(".bz2")
        .trim_end_matches(".xz")
        .trim_end_matches(".zst");
    let ext = name.rsplit('.').next()?;
    Some(match ext {
        "csv" => "CSV",
        "tsv" => "TSV",
        "json" | "ndjson" | "jsonl" => "JSON",
        "parquet" => "PARQUET",
        "avro" => "AVRO",
        "arrow" | "ipc" => "ARROW",
        _ => return None,
    })
}
