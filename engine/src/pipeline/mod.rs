//! Pipelines: `.sql` files of statements run in order in one session.
//!
//! [`vars`] substitutes `${NAME}`, [`split`] cuts the text into located statements with
//! DataFusion's tokenizer, [`runner`] plans and executes each statement (FlowEngine's own
//! statements through [`dialect`]), staging writes so a failed statement leaves no output, and
//! [`runtime`] runs a whole pipeline: recorded runs, resume, watermarks, acknowledgements,
//! checks, lineage and `--follow` micro-batches.

pub mod dialect;
pub mod fused_checks;
pub mod incremental;
pub mod quality;
pub mod runner;
pub mod runtime;
pub mod split;
pub mod vars;

use datafusion::sql::sqlparser::dialect::dialect_from_str;

pub use dialect::{Action, CheckLog};
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
        let text = decode(bytes, &file)?;
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

/// Pipeline text from raw bytes (a file, stdin); invalid UTF-8 is a syntax error located at the
/// first invalid byte.
pub fn decode(bytes: Vec<u8>, file: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let (location, byte) = invalid_utf8_at(e.as_bytes(), e.utf8_error(), file);
        EngineError::Syntax {
            location,
            message: format!("SQL text is not valid UTF-8 (byte 0x{byte:02X})"),
        }
    })
}

/// Where the first invalid byte of SQL text is (line and column in characters, both from
/// 1), and that byte.
fn invalid_utf8_at(bytes: &[u8], error: std::str::Utf8Error, file: &str) -> (SourceLocation, u8) {
    let at = error.valid_up_to();
    let valid = &bytes[..at.min(bytes.len())];
    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = valid.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    // Everything before `at` is UTF-8, and a line starts after a `\n`, so this never fails.
    let column =
        std::str::from_utf8(&valid[line_start..]).map_or(0, |s| s.chars().count()) as u64 + 1;
    let location = SourceLocation {
        file: file.to_string(),
        line,
        column,
    };
    (location, bytes.get(at).copied().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_byte_is_located_by_line_and_character_column() {
        let located = |bytes: &[u8]| match decode(bytes.to_vec(), "p.sql") {
            Err(EngineError::Syntax { location, message }) => {
                (location.line, location.column, message)
            }
            other => panic!("expected a syntax error, got {other:?}"),
        };
        let (line, column, message) = located(b"SELECT 1;\nSELECT '\xc3\xa9\xff';\n");
        assert_eq!((line, column), (2, 10));
        assert_eq!(message, "SQL text is not valid UTF-8 (byte 0xFF)");
        let (line, column, _) = located(b"\x80");
        assert_eq!((line, column), (1, 1));
        assert_eq!(decode(b"SELECT 1;".to_vec(), "p.sql").unwrap(), "SELECT 1;");
    }
}
