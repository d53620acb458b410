//! Errors of the engine, one enum named after the failed action, each carrying where it happened.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// Where a statement sits in its pipeline file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// File the statement came from (`<stdin>`, `<command line>` for inline SQL).
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read configuration file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid configuration in {origin}: {message}")]
    InvalidConfig { origin: String, message: String },

    #[error("cannot read pipeline file {path}: {source}")]
    ReadPipeline {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{location}: {message}")]
    Syntax {
        location: SourceLocation,
        message: String,
    },

    #[error(
        "{location}: undefined variable `${{{name}}}`; pass it with --var {name}=VALUE or set it in the environment"
    )]
    UndefinedVariable {
        location: SourceLocation,
        name: String,
    },

    #[error("{location}: statement {index} ({kind}) failed: {source}")]
    Statement {
        location: SourceLocation,
        index: usize,
        kind: String,
        #[source]
        source: Box<DataFusionError>,
    },

    /// A failing `ERROR` quality check (see [`crate::pipeline::quality`]).
    #[error("{location}: statement {index} (CHECK) failed: {message}")]
    CheckFailed {
        location: SourceLocation,
        index: usize,
        message: String,
    },

    /// A statement panicked inside DataFusion or a connector: an error for that statement,
    /// never a crash.
    #[error(
        "{location}: statement {index} failed with an internal error ({what}); the input may be corrupt, or this is a bug to report"
    )]
    Panicked {
        location: SourceLocation,
        index: usize,
        what: String,
    },

    /// A run that cannot go ahead as asked (`--resume` with nothing to resume, `--follow`
    /// without anything that tells new rows apart): the caller changes how it runs it.
    #[error("{0}")]
    Usage(String),

    /// The program showing a query's rows failed (a closed pipe, a full disk).
    #[error("writing the result: {0}")]
    Output(String),

    /// Run state (runs, steps, watermarks, check results) could not be read or written.
    #[error(transparent)]
    State(#[from] crate::state::StateError),

    /// Lineage events could not be configured or written.
    #[error("lineage: {0}")]
    Lineage(String),

    /// A followed pipeline gave up after failing micro-batch after micro-batch.
    #[error("{0}")]
    GaveUp(String),

    /// A run's last step, acknowledging what its consuming scans read, failed.
    #[error("run {run_id}: {message}")]
    Commit { run_id: String, message: String },

    #[error("cannot build the DataFusion session: {source}")]
    BuildSession {
        #[source]
        source: Box<DataFusionError>,
    },

    #[error("connector `{connector}` failed to register: {source}")]
    RegisterConnector {
        connector: &'static str,
        #[source]
        source: Box<DataFusionError>,
    },

    #[error("{0}")]
    DataFusion(#[from] Box<DataFusionError>),
}

impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        EngineError::DataFusion(Box::new(e))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
