//! One module per subcommand.

#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod follow;
pub(crate) mod lineage;
pub(crate) mod profile;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod serve;
pub(crate) mod sql;
pub(crate) mod user;

use engine::config::LoadedConfig;
use engine::{Engine, EngineConfig};

use engine::pipeline::Pipeline;

use crate::cli::{DisplayArgs, GlobalArgs};
use engine::pipeline::runtime::{Rows, StatementOptions, run_statement};

use crate::report::Terminal;

/// Load configuration (file + environment) and build the engine with every connector, for a
/// local command: files can be read as tables (`SELECT * FROM 'f.csv'`, `read_csv(...)`).
pub(crate) fn build_engine(global: &GlobalArgs) -> anyhow::Result<(Engine, LoadedConfig)> {
    let loaded = load_config(global)?;
    let engine = crate::cluster::engine(&loaded.config)?.with_file_functions();
    Ok((engine, loaded))
}

/// The configuration: the file, the environment, then the global command-line overrides.
pub(crate) fn load_config(global: &GlobalArgs) -> anyhow::Result<LoadedConfig> {
    let mut loaded = EngineConfig::load(global.config.as_deref(), std::env::vars())?;
    if let Some(cluster) = &global.cluster {
        engine::config::cluster_address(cluster)
            .map_err(|message| crate::UsageError(format!("--cluster: {message}")))?;
        loaded.config.cluster = Some(cluster.clone());
    }
    Ok(loaded)
}

pub(crate) use engine::pipeline::runtime::{dialect, var_lookup};

/// A fresh engine for each micro-batch of a followed pipeline.
pub(crate) fn engine_factory(
    global: &GlobalArgs,
) -> impl Fn() -> engine::Result<Engine> + Sync + '_ {
    move || {
        build_engine(global).map(|(e, _)| e).map_err(|e| {
            e.downcast::<engine::EngineError>()
                .unwrap_or_else(|e| engine::EngineError::Usage(crate::render_error(&e)))
        })
    }
}

/// Run every statement of `pipeline` (init and catalog files), without resume or output files.
pub(crate) async fn run_pipeline(
    engine: &Engine,
    pipeline: &Pipeline,
    display: &DisplayArgs,
    rows: Rows,
    summary: bool,
) -> anyhow::Result<()> {
    let total = pipeline.statements.len();
    let observer = Terminal::new(display, false);
    for statement in &pipeline.statements {
        let opts = StatementOptions::plain(total, rows, summary && !display.quiet);
        run_statement(engine, statement, &observer, &opts, None).await?;
    }
    Ok(())
}
