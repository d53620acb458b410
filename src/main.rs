//! The `flowengine` command line: argument parsing, output, progress and exit codes. Pipelines
//! run in the `engine` crate's runtime; connectors come from `connectors`, the Flight SQL server
//! from `flight-server` and cluster mode from `cluster`.
//!
//! Exit codes: 0 success, 1 a statement or pipeline failed, 2 usage or configuration error.

mod cli;
mod cluster;
mod commands;
mod huge_pages;
mod output;
mod progress;
mod report;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error the user fixes by changing how they call us (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let telemetry = init_tracing(&cli);
    huge_pages::configure();
    install_panic_hook();
    // 16 MiB stacks (address space, touched only when used): deep plans that pass the
    // complexity check still have room in DataFusion's and the connectors' recursive passes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli));
    drop(runtime);
    telemetry.shutdown();
    match outcome {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<UsageError>().is_some()
                || matches!(
                    e.downcast_ref::<engine::EngineError>(),
                    Some(
                        engine::EngineError::InvalidConfig { .. }
                            | engine::EngineError::ReadConfig { .. }
                            | engine::EngineError::ReadPipeline { .. }
                            | engine::EngineError::Usage(_)
                    )
                );
            eprintln!("error: {}", render_error(&e));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => commands::run::run(&cli.global, args).await,
        Command::Sql(args) => commands::sql::run(&cli.global, args).await,
        Command::Config(args) => commands::config::run(&cli.global, args),
        Command::Serve(args) => commands::serve::run(&cli.global, args).await,
        Command::Runs(args) => commands::runs::run(&cli.global, args).await,
        Command::Profile(args) => commands::profile::run(&cli.global, args).await,
        Command::Lineage(args) => commands::lineage::run(&cli.global, args).await,
        Command::User(args) => commands::user::run(args),
        #[cfg(feature = "cluster")]
        Command::Scheduler(args) => commands::cluster::scheduler(&cli.global, args).await,
        #[cfg(feature = "cluster")]
        Command::Executor(args) => commands::cluster::executor(&cli.global, args).await,
        #[cfg(not(feature = "cluster"))]
        Command::Scheduler(_) | Command::Executor(_) => {
            Err(UsageError("this flowengine was built without the `cluster` feature".into()).into())
        }
    }
}

/// The error and its causes, each cause once (DataFusion often repeats its source in Display).
pub(crate) fn render_error(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    if e.downcast_ref::<engine::EngineError>().is_some() {
        // Engine errors already embed their cause in their message.
        return out;
    }
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
    }
    out
}

/// Where to export traces: `FLOWENGINE_OTLP_ENDPOINT`, then `otlp_endpoint` in the
/// configuration file, then the standard `OTEL_EXPORTER_OTLP_ENDPOINT`. A configuration that
/// does not load is reported by the command itself, later.
fn otlp_endpoint(cli: &Cli) -> Option<String> {
    engine::EngineConfig::load(cli.global.config.as_deref(), std::env::vars())
        .ok()
        .and_then(|loaded| loaded.config.otlp_endpoint)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

fn init_tracing(cli: &Cli) -> telemetry::Telemetry {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLOWENGINE_LOG").unwrap_or_else(|_| {
        // A server logs one line per query by default; the CLI stays quiet.
        let serving = matches!(
            cli.command,
            Command::Serve(_) | Command::Scheduler(_) | Command::Executor(_)
        );
        EnvFilter::new(if cli.global.verbose || serving {
            "info"
        } else {
            "warn"
        })
    });
    telemetry::init(filter, cli.global.log_json, otlp_endpoint(cli).as_deref())
}

/// A panic inside a query (for example a corrupt file tripping a decoder) is turned into an
/// error for that statement by the executor; print it as one line instead of a raw backtrace,
/// unless FLOWENGINE_BACKTRACE is set.
fn install_panic_hook() {
    if std::env::var_os("FLOWENGINE_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!("internal error{location}; set FLOWENGINE_BACKTRACE=1 for a backtrace");
    }));
}
