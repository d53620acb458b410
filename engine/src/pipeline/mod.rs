//! Pipelines: `.sql` files of statements run in order in one session.
//!
//! [`vars`] substitutes `${NAME}`, [`split`] cuts the text into located statements with
//! DataFusion's tokenizer, and [`runner`] plans and executes each statement, staging writes so
//! a failed statement leaves no output.

pub mod fused_checks;
pub mod incremental;
pub mod quality;
pub mod runner;
pub mod split;
pub mod vars;

use datafusion::sql::sqlparser::dialect::dialect_from_str;

pub use runner::{DryRun, Execution, OutputFormat, Prepared, Started, StatementClass};
pub use split::PipelineStatement;
pub use vars::VarLookup;

use crate::error::{EngineError, Result, SourceLocation};

/// Built-in variable: the absolute directory of the pipeline file, so pipelines can refer to
/// data next to them wherever they are run from.
pub const PIPELINE_DIR: &str = "PIPELINE_DIR";

/// A parsed pipeline: its statements, located in their file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file name used in messages.
    pub file: String,
    pub statements: Vec<PipelineStatement>,
}

impl Pipeline {
    /// Substitute variables and split `text` into statements using `dialect` (DataFusion's
    /// `datafusion.sql_parser.dialect` names, e.g. `generic`, `postgresql`).
    pub fn parse(text: &str, file: &str, vars: &dyn VarLookup, dialect: &str) -> Result<Self> {
        let dialect = dialect_from_str(dialect).ok_or_else(|| EngineError::Syntax {
            location: SourceLocation {
                file: file.to_string(),
                line: 1,
                column: 1,
            },
            message: format!("unsupported SQL dialect `{dialect}`"),
        })?;
        let text = vars::substitute(text, file, vars)?;
        let statements = split::split_statements(&text, file, dialect.as_ref())?;
        Ok(Self {
            file: file.to_string(),
            statements,
        })
    }

    /// Read and parse a pipeline file.
    pub fn from_file(path: &std::path::Path, vars: &dyn VarLookup, dialect: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::ReadPipeline {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            EngineError::Syntax {
                location: SourceLocation {
                    file: file.clone(),
                    line,
                    column: 1,
                },
                message: "pipeline file is not valid UTF-8".into(),
            }
        })?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    p
                }
            })
            .and_then(|p| p.canonicalize().ok())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        let with_dir = |name: &str| {
            vars.lookup(name)
                .or_else(|| (name == PIPELINE_DIR).then(|| dir.clone()))
        };
        Self::parse(&text, &file, &with_dir, dialect)
    }
}
