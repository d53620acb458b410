//! `flowengine serve`: load the catalog files, then serve the session over Arrow Flight SQL
//! until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use engine::pipeline::Pipeline;
use engine::{Engine, EngineConfig};
use flight_server::Server;

use crate::cli::{DisplayArgs, Format, GlobalArgs, ServeArgs};
use crate::exec::Rows;

pub(crate) async fn run(global: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let mut loaded = EngineConfig::load(global.config.as_deref(), std::env::vars())?;
    if let Some(bind) = args.bind {
        loaded.config.server.bind = bind;
    }
    if let Some(bind) = args.admin_bind {
        loaded.config.server.admin_bind = bind;
    }
    // Parquet strings are read as Utf8 rather than Utf8View unless configured: every Flight SQL
    // client (JDBC, ODBC, older pyarrow/ADBC) understands Utf8, and it encodes smaller on the wire.
    loaded
        .config
        .datafusion
        .entry("datafusion.execution.parquet.schema_force_view_types".into())
        .or_insert_with(|| "false".into());
    // Concurrent queries share the pool fairly (and spill) unless configured otherwise.
    loaded
        .config
        .memory_pool
        .get_or_insert(engine::config::MemoryPoolKind::Fair);
    let engine = Arc::new(Engine::try_new(&loaded.config, &connectors::registry())?);
    let server = Server::bind(Arc::clone(&engine), loaded.file.iter().cloned().collect()).await?;
    let (grpc, http) = if loaded.config.server.tls.is_some() {
        ("grpc+tls", "https")
    } else {
        ("grpc", "http")
    };
    match server.admin_addr() {
        Some(admin) => eprintln!(
            "flowengine: Flight SQL listening on {grpc}://{} ; admin on {http}://{admin}",
            server.flight_addr()
        ),
        None => eprintln!(
            "flowengine: Flight SQL listening on {grpc}://{} ; admin endpoint off",
            server.flight_addr()
        ),
    }

    let lookup = super::var_lookup(&args.vars);
    let dialect = super::dialect(&engine);
    let display = DisplayArgs {
        format: Format::Table,
        max_rows: 0,
        quiet: false,
    };
    for file in &args.catalogs {
        let pipeline = Pipeline::from_file(file, &lookup, &dialect)?;
        super::run_pipeline(&engine, &pipeline, &display, Rows::Count, true)
            .await
            .with_context(|| format!("loading catalog file {}", file.display()))?;
    }
    server.set_ready();
    eprintln!("flowengine: ready");
    server.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
