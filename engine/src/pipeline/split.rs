//! Splitting pipeline text into statements with DataFusion's own SQL tokenizer, keeping each
//! statement's starting line and column so every later error can point into the file.

use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{EngineError, Result, SourceLocation};

/// One statement of a pipeline, as written (without its terminating `;`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStatement {
    /// 1-based position in the pipeline.
    pub index: usize,
    /// Where the statement's first token is.
    pub location: SourceLocation,
    /// The statement text.
    pub sql: String,
}

impl PipelineStatement {
    /// The statement preceded by blank lines and spaces so that a parser's line/column
    /// positions are the positions in the original file.
    pub fn positioned_sql(&self) -> String {
        let line = self.location.line.max(1) as usize;
        let col = self.location.column.max(1) as usize;
        let mut s = String::with_capacity(self.sql.len() + line + col);
        s.extend(std::iter::repeat_n('\n', line - 1));
        s.extend(std::iter::repeat_n(' ', col - 1));
        s.push_str(&self.sql);
        s
    }
}

/// Split `text` (already variable-substituted) into statements. `file` names it in errors.
pub fn split_statements(
    text: &str,
    file: &str,
    dialect: &dyn Dialect,
) -> Result<Vec<PipelineStatement>> {
    let tokens = Tokenizer::new(dialect, text)
        .tokenize_with_location()
        .map_err(|e| EngineError::Syntax {
            location: SourceLocation {
                file: file.to_string(),
                line: e.location.line,
                column: e.location.column,
            },
            message: e.message,
        })?;
    let index = LineIndex::new(text);
    let mut statements = Vec::new();
    let mut start: Option<(u64, u64)> = None;
    let mut last_end: Option<(u64, u64)> = None;
    let push = |start: (u64, u64), end_offset: usize, statements: &mut Vec<PipelineStatement>| {
        let begin = index.offset(start.0, start.1);
        let sql = text[begin..end_offset].trim_end().to_string();
        statements.push(PipelineStatement {
            index: statements.len() + 1,
            location: SourceLocation {
                file: file.to_string(),
                line: start.0,
                column: start.1,
            },
            sql,
        });
    };
    for t in &tokens {
        match &t.token {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if let Some(s) = start.take() {
                    let end = index.offset(t.span.start.line, t.span.start.column);
                    push(s, end, &mut statements);
                }
            }
            Token::EOF => {}
            _ => {
                if start.is_none() {
                    start = Some((t.span.start.line, t.span.start.column));
                }
                last_end = Some((t.span.end.line, t.span.end.column));
            }
        }
    }
    if let Some(s) = start {
        // A final statement without `;`: take the text up to its last token.
        let end = last_end
            .map(|(l, c)| index.offset(l, c))
            .unwrap_or(text.len());
        push(s, end, &mut statements);
    }
    Ok(statements)
}

/// Maps 1-based (line, character column) positions to byte offsets.
struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    fn offset(&self, line: u64, column: u64) -> usize {
        let Some(&start) = self.line_starts.get((line.max(1) - 1) as usize) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        rest.char_indices()
            .nth((column.max(1) - 1) as usize)
            .map(|(i, _)| start + i)
            .unwrap_or(self.text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    fn split(text: &str) -> Vec<PipelineStatement> {
        split_statements(text, "p.sql", &GenericDialect {}).unwrap()
    }

    #[test]
    fn splits_with_positions() {
        let s = split("-- header\nSELECT 1;\n\n  SELECT ';' AS x ;\nSELECT 3");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].sql, "SELECT 1");
        assert_eq!((s[0].location.line, s[0].location.column), (2, 1));
        assert_eq!(s[1].sql, "SELECT ';' AS x");
        assert_eq!((s[1].location.line, s[1].location.column), (4, 3));
        assert_eq!(s[2].sql, "SELECT 3");
        assert_eq!(s[2].index, 3);
    }

    #[test]
    fn empty_statements_and_comments_are_skipped() {
        let s = split(";;\n/* c; */ ;SELECT 1; -- trailing ; comment\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].sql, "SELECT 1");
    }

    #[test]
    fn multibyte_columns() {
        let s = split("SELECT 'é'; SELECT 2");
        assert_eq!(s[1].sql, "SELECT 2");
        assert_eq!(s[1].location.column, 13);
        assert!(s[1].positioned_sql().ends_with("SELECT 2"));
    }

    #[test]
    fn unterminated_string_is_located() {
        let err = split_statements("SELECT 1;\nSELECT 'abc", "p.sql", &GenericDialect {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.sql:2:"), "{err}");
    }
}
