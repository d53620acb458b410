//! Command-line arguments (clap). Every flag has a `FLOWENGINE_*` environment equivalent where
//! it makes sense, and its doc comment is its `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// FlowEngine: SQL pipelines and queries over files, databases and streams, on Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "flowengine", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct GlobalArgs {
    /// Configuration file (default: ./flowengine.toml when present).
    #[arg(long, global = true, env = "FLOWENGINE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log engine activity (info level) to stderr. FLOWENGINE_LOG takes tracing filter syntax.
    #[arg(long, short = 'v', global = true)]
    pub(crate) verbose: bool,
    /// Write logs as JSON lines.
    #[arg(long, global = true, env = "FLOWENGINE_LOG_JSON")]
    pub(crate) log_json: bool,
    /// Execute queries on a Ballista cluster: its scheduler, df://HOST:PORT (overrides
    /// `cluster` in flowengine.toml and FLOWENGINE_CLUSTER).
    #[arg(long, global = true, value_name = "df://HOST:PORT")]
    pub(crate) cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a SQL pipeline file: statements in order, one summary line each on stderr.
    Run(RunArgs),
    /// Run SQL from -c, stdin, or an interactive shell on a terminal.
    Sql(SqlArgs),
    /// Inspect configuration.
    Config(ConfigArgs),
    /// List recorded pipeline runs (newest last), or one run's steps.
    Runs(RunsArgs),
    /// Profile every column of a table, a data file or a query: nulls, distinct, min/max,
    /// mean/stddev, lengths, top values, histogram.
    Profile(ProfileArgs),
    /// Show what each statement of a pipeline writes and which source columns feed each target
    /// column (from the logical plans; nothing is written).
    Lineage(LineageArgs),
    /// Serve the catalog over Arrow Flight SQL (BI tools, ADBC, JDBC, notebooks), with an admin
    /// HTTP endpoint for /health, /ready and /metrics.
    Serve(ServeArgs),
    /// Credentials for `[security]`: password hashes and API keys.
    User(UserArgs),
    /// Start a Ballista scheduler: the coordinator `--cluster df://HOST:PORT` sends queries to.
    Scheduler(SchedulerArgs),
    /// Start a Ballista executor: runs the tasks its scheduler hands out.
    Executor(ExecutorArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    /// Address to listen on (gRPC for clients and executors).
    #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
    pub(crate) bind: String,
    /// Host name executors and clients reach this scheduler by (default: the bind host).
    #[arg(long, value_name = "HOST")]
    pub(crate) external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is declared lost and its tasks
    /// run elsewhere.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub(crate) executor_timeout_secs: u64,
    /// Attempts of one task before its job fails.
    #[arg(long, default_value_t = 4)]
    pub(crate) task_max_failures: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
    pub(crate) scheduler: String,
    /// Address of this executor's Arrow Flight service (shuffle data for other executors).
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    pub(crate) bind: String,
    /// Port of this executor's gRPC service, where the scheduler pushes tasks (default: the
    /// Flight port plus one).
    #[arg(long, value_name = "PORT")]
    pub(crate) grpc_port: Option<u16>,
    /// Host name the scheduler and other executors reach this executor by (default: the bind
    /// host).
    #[arg(long, value_name = "HOST")]
    pub(crate) external_host: Option<String>,
    /// Tasks run at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub(crate) concurrent_tasks: Option<usize>,
    /// Memory for all tasks together, e.g. 4GiB (default: 80% of the machine's or
    /// container's memory); tasks spill beyond their share.
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory_limit: Option<bytesize::ByteSize>,
    /// Directory for shuffle files (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub(crate) heartbeat_secs: u64,
}

#[derive(Debug, Args)]
pub(crate) struct UserArgs {
    #[command(subcommand)]
    pub(crate) command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Print the argon2id hash of a password for `password_hash` in `[[security.users]]`. The
    /// password is read from stdin (first line; no echo on a terminal), never from arguments.
    HashPassword,
    /// Generate an API key: prints the key (give it to the service account, once) and its
    /// SHA-256 for `key_sha256` in `[[security.api_keys]]`.
    NewApiKey,
}

#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// A table (registered by --init), a data file (.csv, .tsv, .json, .parquet, .avro, .arrow)
    /// or a query (SELECT ... / WITH ...).
    #[arg(value_name = "TABLE|FILE|QUERY")]
    pub(crate) target: String,
    /// Pipeline files run first, e.g. to register tables (repeatable).
    #[arg(long, value_name = "FILE.sql")]
    pub(crate) init: Vec<PathBuf>,
    /// Set a variable used as ${NAME} in --init files (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    /// Most frequent values shown per column.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    /// Histogram bins for numeric columns.
    #[arg(long, default_value_t = 10)]
    pub(crate) bins: usize,
    #[command(flatten)]
    pub(crate) display: DisplayArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LineageArgs {
    #[arg(value_name = "PIPELINE.sql")]
    pub(crate) pipeline: PathBuf,
    /// Set a variable used as ${NAME} in the pipeline (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    /// text (a tree per statement), dot (Graphviz) or json.
    #[arg(long, default_value = "text", value_parser = ["text", "dot", "json"])]
    pub(crate) format: String,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// Only runs of this pipeline file.
    #[arg(value_name = "PIPELINE.sql")]
    pub(crate) pipeline: Option<PathBuf>,
    /// Show the steps of this run.
    #[arg(long, value_name = "RUN_ID")]
    pub(crate) run: Option<String>,
    /// At most this many runs (the most recent).
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) display: DisplayArgs,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ServeArgs {
    /// SQL file run at start-up to build the served catalog (external tables, views);
    /// repeatable, run in order.
    #[arg(long = "catalog", value_name = "FILE.sql")]
    pub(crate) catalogs: Vec<PathBuf>,
    /// Flight SQL address (overrides [server] bind; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) bind: Option<String>,
    /// Admin HTTP address for /health, /ready, /metrics, or "off" (overrides [server] admin_bind).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) admin_bind: Option<String>,
    /// Set a variable used as ${NAME} in the catalog files and followed pipelines (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    /// Run this pipeline continuously while serving, as `flowengine run --follow` does
    /// (repeatable); its micro-batches are counted at /metrics. Shutdown waits for the current
    /// micro-batch.
    #[arg(long = "follow", value_name = "PIPELINE.sql")]
    pub(crate) follow: Vec<PathBuf>,
    /// With --follow: seconds to wait when a micro-batch found nothing new.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub(crate) interval: f64,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    /// The pipeline file.
    #[arg(value_name = "PIPELINE.sql")]
    pub(crate) pipeline: PathBuf,
    /// Set a variable used as ${NAME} in the pipeline (repeatable). Unset names fall back to the environment.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    /// Plan every statement without executing writes or queries (DDL still runs, so later statements plan).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print each statement's logical and physical plan.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Continue the last failed run of this (unchanged) file: writes it committed are not
    /// repeated; catalog statements are replayed.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Write the trailing query's result to this file (.csv, .json or .parquet) instead of printing it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) output: Option<String>,
    /// Run continuously in micro-batches: run the pipeline again as soon as one run commits, or
    /// after --interval when its incremental views found nothing new. Each micro-batch is a run of
    /// its own (watermarks committed after its sinks); ${batch} names it. SIGTERM stops after
    /// the current micro-batch; Ctrl-C cancels it (nothing it wrote is committed).
    #[arg(long, conflicts_with_all = ["resume", "dry_run", "explain", "output"])]
    pub(crate) follow: bool,
    /// With --follow: seconds to wait when a micro-batch found nothing new.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", requires = "follow")]
    pub(crate) interval: f64,
    /// With --follow: stop after this many micro-batches that read something.
    #[arg(long, value_name = "N", requires = "follow")]
    pub(crate) max_batches: Option<u64>,
    #[command(flatten)]
    pub(crate) display: DisplayArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// SQL to run (one or more statements); repeatable. Without it, SQL comes from stdin.
    #[arg(long, short = 'c', value_name = "SQL", allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
    /// Pipeline files run first to set up tables (repeatable).
    #[arg(long, value_name = "FILE.sql")]
    pub(crate) init: Vec<PathBuf>,
    /// Set a variable used as ${NAME} (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) display: DisplayArgs,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct DisplayArgs {
    /// How query results are printed.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table, env = "FLOWENGINE_FORMAT")]
    pub(crate) format: Format,
    /// Rows shown by the table format (all rows are still counted; csv/json print everything).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) max_rows: usize,
    /// No per-statement summary lines on stderr.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    pub(crate) command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration and print the effective values (defaults filled in).
    Check,
    /// Print the configuration (file plus environment overrides) as TOML, secrets redacted;
    /// with --effective, every default filled in. Validates it first.
    Print {
        /// Fill in every default (what the engine and server actually use).
        #[arg(long)]
        effective: bool,
    },
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let name = name.trim();
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("`{name}` is not a valid variable name"));
    }
    Ok((name.to_string(), value.to_string()))
}
