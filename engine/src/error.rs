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
