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
use crate::exec::{Rows, StatementOptions, run_statement};

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

/// Variable lookup: `--var` values first, then the environment.
pub(crate) fn var_lookup(vars: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// The session's SQL dialect name (for splitting statements).
pub(crate) fn dialect(engine: &Engine) -> String {
    engine
        .context()
        .state()
        .config()
        .options()
        .sql_parser
        .dialect
        .to_string()
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
    for statement in &pipeline.statements {
        let opts = StatementOptions {
            explain: false,
            output: None,
            rows,
            summary: summary && !display.quiet,
            total,
            committed_by: None,
            run: None,
            deferred: &[],
            drop_empty_writes: false,
        };
        run_statement(engine, statement, display, &opts, None).await?;
    }
    Ok(())
}
