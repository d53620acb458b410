//! Data quality checks declared in the pipeline: `CREATE CHECK name ON table <rule> [WARN|ERROR]`.
//!
//! | rule | fails for |
//! |---|---|
//! | `EXPECT <predicate>` | every row where the predicate is not true (false or NULL): not-null, accepted values, ranges, referential integrity with `IN (SELECT ...)` |
//! | `UNIQUE (col, ...)` | every key that occurs more than once |
//! | `ROW COUNT BETWEEN a AND b` | the table, when its row count is outside the range |
//! | `FRESH column WITHIN 'interval'` | the table, when its newest `column` is older than now - interval (or there is none) |
//! | `AS <query>` (no `ON`) | every row the query returns (custom SQL) |
//!
//! Each rule becomes a query returning the failing rows; a check passes when it returns none.
//! `ERROR` (the default) fails the statement, so the run stops before later sinks commit;
//! `WARN` records the result and continues. `... DEAD_LETTER 'file.json'` also writes the failing
//! rows there (JSON lines).

use std::time::Instant;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::Result;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warn,
    Error,
}

/// A parsed `CREATE CHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub table: Option<String>,
    pub severity: Severity,
    /// The query returning failing rows.
    pub failing_rows_sql: String,
    /// Where failing rows are also written (JSON lines).
    pub dead_letter: Option<String>,
    /// The predicate of an `EXPECT` rule (which [`super::fused_checks`] can evaluate inside the
    /// scan of the write that follows the check).
    pub expect: Option<String>,
}

/// The outcome of running a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub failing_rows: u64,
    /// Up to five failing rows, as a table.
    pub sample: Option<String>,
    pub duration_ms: u64,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        self.failing_rows == 0
    }
}

/// `Some` when `sql` is a `CREATE CHECK` statement (`Err` for a malformed one), else `None`.
pub fn parse(sql: &str) -> Option<std::result::Result<Check, String>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    // Significant tokens with their byte offsets in `sql`.
    let offsets = line_offsets(sql);
    let toks: Vec<(&Token, usize)> = tokens
        .iter()
        .filter(|t| {
            !matches!(
                t.token,
                Token::Whitespace(_) | Token::SemiColon | Token::EOF
            )
        })
        .map(|t| {
            let l = t.span.start;
            (
                &t.token,
                offsets[(l.line as usize).saturating_sub(1)]
                    + char_bytes(sql, &offsets, l.line, l.column),
            )
        })
        .collect();
    let kw = |i: usize, k: &str| matches!(toks.get(i), Some((Token::Word(w), _)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    if !(kw(0, "CREATE") && kw(1, "CHECK")) {
        return None;
    }
    let usage = "expected CREATE CHECK name ON table (EXPECT predicate | UNIQUE (columns) | ROW COUNT BETWEEN a AND b | FRESH column WITHIN 'interval') [WARN | ERROR] [DEAD_LETTER 'file'], or CREATE CHECK name AS query [WARN | ERROR]";
    let word = |i: usize| match toks.get(i) {
        Some((Token::Word(w), _)) => Some(match w.quote_style {
            Some(q) => format!("{q}{}{q}", w.value),
            None => w.value.clone(),
        }),
        _ => None,
    };
    let Some(name) = word(2) else {
        return Some(Err(usage.into()));
    };
    // Trailing options: [WARN|ERROR] [DEAD_LETTER 'file'] in either order.
    let mut end = toks.len();
    let mut severity = Severity::Error;
    let mut dead_letter = None;
    loop {
        if end >= 2
            && kw(end - 2, "DEAD_LETTER")
            && let Some((Token::SingleQuotedString(p), _)) = toks.get(end - 1)
        {
            dead_letter = Some(p.clone());
            end -= 2;
        } else if end >= 1 && (kw(end - 1, "WARN") || kw(end - 1, "ERROR")) {
            severity = if kw(end - 1, "WARN") {
                Severity::Warn
            } else {
                Severity::Error
            };
            end -= 1;
        } else {
            break;
        }
    }
    let text_between = |from: usize, to: usize| -> String {
        let a = toks.get(from).map_or(sql.len(), |t| t.1);
        let b = toks.get(to).map_or(sql.len(), |t| t.1);
        sql.get(a..b).unwrap_or("").trim().to_string()
    };
    let mut expect = None;
    let (table, failing) = if kw(3, "AS") {
        (None, text_between(4, end))
    } else if kw(3, "ON") {
        // table [. table] then the rule
        let mut i = 4;
        let mut parts = Vec::new();
        while let Some(w) = word(i) {
            parts.push(w);
            i += 1;
            if matches!(toks.get(i), Some((Token::Period, _))) {
                i += 1;
            } else {
                break;
            }
        }
        if parts.is_empty() {
            return Some(Err(usage.into()));
        }
        let table = parts.join(".");
        let rule = if kw(i, "EXPECT") {
            let p = text_between(i + 1, end);
            expect = Some(p.clone());
            format!("SELECT * FROM {table} WHERE ({p}) IS NOT TRUE")
        } else if kw(i, "UNIQUE") {
            let cols = text_between(i + 1, end);
            let cols = cols
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_string();
            format!(
                "SELECT {cols}, count(*) AS occurrences FROM {table} GROUP BY {cols} HAVING count(*) > 1"
            )
        } else if kw(i, "ROW") && kw(i + 1, "COUNT") {
            let range = text_between(i + 2, end);
            format!("SELECT count(*) AS row_count FROM {table} HAVING NOT (count(*) {range})")
        } else if kw(i, "FRESH") && kw(i + 2, "WITHIN") {
            let column = word(i + 1).unwrap_or_default();
            let within = text_between(i + 3, end);
            format!(
                "SELECT max({column}) AS newest FROM {table} HAVING max({column}) IS NULL OR max({column}) < now() - INTERVAL {within}"
            )
        } else {
            return Some(Err(usage.into()));
        };
        (Some(table), rule)
    } else {
        return Some(Err(usage.into()));
    };
    if failing.is_empty() {
        return Some(Err(usage.into()));
    }
    Some(Ok(Check {
        name,
        table,
        severity,
        failing_rows_sql: failing,
        dead_letter,
        expect,
    }))
}

fn line_offsets(sql: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    v
}

/// Byte offset within its line of a 1-based character column.
fn char_bytes(sql: &str, offsets: &[usize], line: u64, column: u64) -> usize {
    let start = offsets[(line as usize).saturating_sub(1).min(offsets.len() - 1)];
    sql[start..]
        .char_indices()
        .nth((column as usize).saturating_sub(1))
        .map_or(sql.len() - start, |(i, _)| i)
}

impl Engine {
    /// Run `check` over `failing`, its failing-rows query (planned, possibly rewritten by access
    /// control): count the rows, keep the first five and write them to its dead-letter file when
    /// it names one.
    pub async fn run_check_over(
        &self,
        check: &Check,
        failing: datafusion::dataframe::DataFrame,
    ) -> Result<CheckOutcome> {
        let started = Instant::now();
        let count = failing.clone().count().await? as u64;
        let sample = if count > 0 {
            let rows = failing.clone().limit(0, Some(5))?.collect().await?;
            Some(pretty_format_batches(&rows)?.to_string())
        } else {
            None
        };
        if count > 0
            && let Some(path) = &check.dead_letter
        {
            failing
                .write_json(
                    path,
                    datafusion::dataframe::DataFrameWriteOptions::new(),
                    None,
                )
                .await?;
        }
        Ok(CheckOutcome {
            failing_rows: count,
            sample,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Check {
        parse(sql).unwrap().unwrap()
    }

    #[test]
    fn rules_become_failing_row_queries() {
        let c = ok("CREATE CHECK ids ON orders EXPECT id IS NOT NULL AND amount >= 0 WARN");
        assert_eq!(c.severity, Severity::Warn);
        assert_eq!(c.expect.as_deref(), Some("id IS NOT NULL AND amount >= 0"));
        assert_eq!(
            c.failing_rows_sql,
            "SELECT * FROM orders WHERE (id IS NOT NULL AND amount >= 0) IS NOT TRUE"
        );
        let c = ok("CREATE CHECK u ON s.orders UNIQUE (id, line) DEAD_LETTER 'dup.json'");
        assert_eq!(c.severity, Severity::Error);
        assert_eq!(c.dead_letter.as_deref(), Some("dup.json"));
        assert!(
            c.failing_rows_sql
                .contains("GROUP BY id, line HAVING count(*) > 1"),
            "{c:?}"
        );
        let c = ok("CREATE CHECK n ON orders ROW COUNT BETWEEN 1 AND 10");
        assert!(
            c.failing_rows_sql
                .ends_with("HAVING NOT (count(*) BETWEEN 1 AND 10)"),
            "{c:?}"
        );
        let c = ok("CREATE CHECK f ON orders FRESH updated_at WITHIN '1 day' ERROR");
        assert!(
            c.failing_rows_sql.contains("now() - INTERVAL '1 day'"),
            "{c:?}"
        );
        let c = ok("CREATE CHECK custom AS SELECT * FROM a WHERE x > 1 WARN");
        assert_eq!(c.failing_rows_sql, "SELECT * FROM a WHERE x > 1");
        assert_eq!(c.table, None);
        assert_eq!(parse("CREATE TABLE x AS SELECT 1"), None);
        assert!(matches!(parse("CREATE CHECK x ON t"), Some(Err(_))));
        assert!(matches!(
            parse("CREATE CHECK x ON t SOMETHING"),
            Some(Err(_))
        ));
    }
}
