//! `flowengine serve`: load the catalog files, then serve the session over Arrow Flight SQL
//! until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use engine::pipeline::Pipeline;
use flight_server::Server;

use engine::pipeline::runtime::follow::{FollowObserver, FollowOptions, follow_until};
use engine::pipeline::runtime::{Batch, Rows, RunObserver, RunRequest};

use crate::cli::{DisplayArgs, Format, GlobalArgs, ServeArgs};

/// The server's configuration: the file and environment, the command line's addresses, and
/// the server's own defaults. Read at start and again on every SIGHUP. `token` is the first-run
/// token ([`first_run_token`]), accepted while the configuration still names no credentials.
fn server_config(
    global: &GlobalArgs,
    args: &ServeArgs,
    token: Option<&str>,
) -> Result<engine::config::LoadedConfig> {
    let mut loaded = super::load_config(global)?;
    if let Some(bind) = &args.bind {
        loaded.config.server.bind = bind.clone();
    }
    if let Some(bind) = &args.admin_bind {
        loaded.config.server.admin_bind = bind.clone();
    }
    if let Some(token) = token
        && needs_first_run_token(&loaded.config)
    {
        loaded
            .config
            .security
            .api_keys
            .push(engine::security::config::ApiKeyConfig {
                name: FIRST_RUN_ACCOUNT.into(),
                key_sha256: engine::security::credentials::sha256_hex(token),
                roles: vec![engine::security::config::ADMIN_ROLE.into()],
                attributes: Default::default(),
                tenant: None,
            });
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
    Ok(loaded)
}

/// The account the first-run token logs in as.
const FIRST_RUN_ACCOUNT: &str = "first-run";

/// Whether the configuration asks for authentication but names no way to authenticate: a
/// first run, before any user, API key or JWT issuer is configured.
fn needs_first_run_token(config: &engine::EngineConfig) -> bool {
    let security = &config.security;
    security.auth == engine::security::config::AuthMode::Password
        && security.users.is_empty()
        && security.api_keys.is_empty()
        && security.jwt.is_none()
}

/// On a first run on a loopback address, as Jupyter does: a random token, printed once with a
/// ready-to-paste connect line, that is the server's only credential (an admin API key) until
/// the configuration names users. A server on another address still refuses to start without
/// users, and nothing is weakened: without the token nobody gets in.
fn first_run_token(global: &GlobalArgs, args: &ServeArgs) -> Result<Option<String>> {
    let loaded = server_config(global, args, None)?;
    let loopback = loaded
        .config
        .server
        .bind
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| loaded.config.server.bind.starts_with("localhost:"));
    Ok((loopback && needs_first_run_token(&loaded.config))
        .then(|| engine::security::credentials::random_secret("fek_first_")))
}

pub(crate) async fn run(global: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let token = first_run_token(global, &args)?;
    let loaded = server_config(global, &args, token.as_deref())?;
    let engine = Arc::new(crate::cluster::engine(&loaded.config)?);
    // system.runs, system.steps, ...: the runs of pipelines, `--follow`ed ones included.
    let store = engine::state::open(&loaded.config);
    engine::state::register_system_tables(engine.context(), &store).await?;
    // Checks clients run (`CREATE CHECK` over Flight SQL) land in system.quality_results too.
    engine.record_checks_in(Arc::clone(&store), "flight-sql");
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
    if let Some(token) = &token {
        eprintln!(
            "flowengine: no users are configured, so this loopback server accepts only this \
             token (an admin key, valid until the server stops; add [[security.users]] or \
             [[security.api_keys]] to flowengine.toml for lasting accounts):\n\
             \n    export FLOWENGINE_TOKEN={token}\n\
             \n  then connect with `authorization: Bearer $FLOWENGINE_TOKEN`, e.g. in Python:\
             \n    flight_sql.connect(\"{grpc}://{addr}\", db_kwargs={{\"adbc.flight.sql.authorization_header\": \"Bearer \" + os.environ[\"FLOWENGINE_TOKEN\"]}})\n",
            addr = server.flight_addr()
        );
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
    let stop = Arc::new(AtomicBool::new(false));
    // Declared before the followers that borrow them.
    let factory = super::engine_factory(global);
    let registry = connectors::registry();
    let mut followers = Vec::new();
    for pipeline in &args.follow {
        let request = RunRequest {
            pipeline: pipeline.clone(),
            vars: args.vars.clone(),
            ..Default::default()
        };
        let options = FollowOptions::new(&request, args.interval, None)?;
        let observer = Metered {
            metrics: server.pipeline_metrics(),
            pipeline: pipeline.display().to_string(),
        };
        let stop = Arc::clone(&stop);
        let (factory, registry) = (&factory, &registry);
        eprintln!("flowengine: following {}", pipeline.display());
        // Polled beside the server in this task.
        followers.push(async move {
            let name = request.pipeline.display().to_string();
            if let Err(e) =
                follow_until(factory, registry, &request, &options, stop, &observer).await
            {
                eprintln!("flowengine: pipeline {name} stopped: {e}");
            }
        });
    }
    let reloads = tokio::spawn(reload_on_sighup(
        global.clone(),
        args.clone(),
        token,
        server.reloader(),
    ));
    server.set_ready();
    eprintln!("flowengine: ready");
    let serving = async {
        let served = server.run(shutdown_signal()).await;
        // The continuous pipelines finish their current micro-batch.
        stop.store(true, Ordering::Release);
        served
    };
    let (served, _) = tokio::join!(serving, futures::future::join_all(followers));
    reloads.abort();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Reload the configuration on every SIGHUP: safe settings take effect, the others are named
/// as needing a restart; an invalid file changes nothing. Only key names are printed.
async fn reload_on_sighup(
    global: GlobalArgs,
    args: ServeArgs,
    token: Option<String>,
    reloader: flight_server::Reloader,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: configuration reload is off");
            return;
        };
        while hup.recv().await.is_some() {
            match server_config(&global, &args, token.as_deref()) {
                Err(e) => eprintln!(
                    "flowengine: configuration reload failed, keeping the running configuration: {}",
                    crate::render_error(&e)
                ),
                Ok(loaded) => {
                    let report = reloader.reload(&loaded.config);
                    let list = |keys: &[String]| {
                        if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.join(", ")
                        }
                    };
                    eprintln!(
                        "flowengine: configuration reloaded; applied: {}; need a restart: {}",
                        list(&report.applied),
                        list(&report.restart_needed)
                    );
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (global, args, reloader);
    }
}

/// Counts a followed pipeline's micro-batches in the server's metrics.
struct Metered {
    metrics: flight_server::PipelineMetrics,
    pipeline: String,
}

impl RunObserver for Metered {
    fn notice(&self, message: &str) {
        eprintln!("{message}");
    }
}

impl FollowObserver for Metered {
    fn committed(&self, batch: &Batch, elapsed: std::time::Duration) {
        self.metrics.committed(
            &self.pipeline,
            elapsed.as_secs_f64(),
            flight_server::BatchFigures {
                acknowledged: batch.acknowledged,
                rows_written: batch.rows_written,
                bad_records: batch.bad_records,
                backlog: batch.backlog,
            },
        );
    }
    fn failed(&self) {
        self.metrics.failed(&self.pipeline);
    }
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
